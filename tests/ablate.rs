//! `sift-lab ablate`, `sift-lab merge` of its shards and `sift-lab figures`, on real RTE and MRPC
//! subsets with the default model: a tiny grid end to end, killed with SIGKILL and resumed,
//! split into shards and merged, redrawn byte for byte; budgets against hand-worked counts; the
//! config errors; and the notebooks executed against the grid's outputs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::{run_err, run_ok, sift_lab};
use polars::prelude::DataFrame;
use sift_lab::ablate::results;
use sift_lab::output;

/// A Fig. 6-style grid on 24 RTE and 24 MRPC examples: SIFT (and random, with --random) on
/// W_q,k,v,o at budgets 2,000 and 20,000, and head-only; one seed, one epoch, 64 tokens.
/// 10 cells of a few seconds each.
const GRID: &str = r#"item = "fig6"
title = "test grid"
table_rows = ["method", "budget"]
[train]
epochs = 1
batch_size = 8
max_len = 64
train_limit = 24
eval_limit = 24
[axes]
tasks = ["rte", "mrpc"]
methods = ["sift", "head"]
modules = ["q,k,v,o"]
budgets = [2000, 20000]
seeds = [1]
lr = { sift = [5e-3], random = [5e-3], head = [5e-3] }
[[paper]]
method = "sift"
task = "mrpc"
budget = 2000
value = 80.5
"#;

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("grid.toml");
    std::fs::write(&path, GRID).unwrap();
    path
}

fn ablate(config: &Path, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = sift_lab();
    cmd.args(["--threads", "1", "ablate"])
        .arg(config)
        .args(["--random", "--out"])
        .arg(out)
        .args(extra);
    cmd
}

/// results.parquet without the columns that may differ between runs (time, memory).
fn without_timings(path: &Path) -> DataFrame {
    output::read_parquet(path)
        .unwrap()
        .drop_many(["wall_seconds", "peak_rss_mib"])
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push((
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_quick_grid_runs_resumes_after_sigkill_merges_shards_and_redraws_byte_for_byte() {
    let tmp = common::temp_dir("ablate");
    let config = write_config(tmp.path());

    // 1. Uninterrupted.
    let whole = tmp.path().join("whole");
    let stdout = run_ok(&mut ablate(&config, &whole, &[]));
    assert!(
        stdout.contains("10 computed now, 0 already there"),
        "{stdout}"
    );
    let file = results::read(&whole.join("results.parquet")).unwrap();
    assert_eq!(file.rows.len(), 10);
    for row in &file.rows {
        assert_eq!(row.status, "completed", "{row:?}");
        // Every cell is an ordinary train run with its own files.
        let cell = whole.join("cells").join(row.cell.dir_name());
        assert!(cell.join("metrics.parquet").is_file() && cell.join("summary.json").is_file());
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cell.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(
            summary["best_epoch"]["metrics"]["accuracy"].as_f64(),
            row.best.get("accuracy").copied()
        );
        // Budgets worked by hand on MiniLM-L6 (24 attention weights of 384 × 384; the head is
        // the pooler, 384 · 384 + 384 = 147,840, and the classifier, 2 · 384 + 2 = 770):
        // 2,000 / 24 = 83.3 → 83 a tensor = 1,992; 20,000 / 24 = 833.3 → 833 = 19,992.
        let expected = match (row.cell.method, row.cell.budget) {
            (sift_lab::methods::MethodKind::Head, _) => 0,
            (_, Some(2000)) => 1_992,
            (_, Some(20000)) => 19_992,
            other => panic!("unexpected cell {other:?}"),
        };
        assert_eq!(row.achieved_budget, expected, "{}", row.cell.dir_name());
        assert_eq!(row.trainable_params, expected + 147_840 + 770);
        // Accuracy on 24 examples is a multiple of 1/24.
        let acc = row.best["accuracy"] * 24.0;
        assert!((acc - acc.round()).abs() < 1e-9, "{acc}");
    }
    // The same grid into a folder holding only the finished cells (its results file lost):
    // every cell is read back from its own folder, none is trained, and the results agree.
    let read_back = tmp.path().join("read-back");
    copy_dir(&whole.join("cells"), &read_back.join("cells"));
    let stdout = run_ok(&mut ablate(&config, &read_back, &[]));
    assert!(
        stdout.contains("0 computed now, 10 already there"),
        "{stdout}"
    );
    assert_eq!(
        results::read(&read_back.join("results.parquet"))
            .unwrap()
            .rows,
        file.rows
    );
    let methods: Vec<String> = output::column::strings(
        &output::read_parquet(&whole.join("results.parquet")).unwrap(),
        "method",
    )
    .unwrap();
    assert_eq!(methods.iter().filter(|m| *m == "random").count(), 4);
    let table = std::fs::read_to_string(whole.join("table.md")).unwrap();
    assert!(
        table.contains("| SIFT | 2,000 | 1,992 (2,000) |") && table.contains("80.5"),
        "{table}"
    );
    assert!(
        whole.join("fig6_budget_rte.png").is_file() && whole.join("fig6_budget_mrpc.svg").is_file()
    );

    // A second run into the same folder without --resume is refused.
    let err = run_err(&mut ablate(&config, &whole, &[]));
    assert!(err.contains("--resume"), "{err}");

    // 2. Killed with SIGKILL after a few cells, then resumed: no finished cell is redone and
    // results.parquet equals the uninterrupted run's.
    let killed = tmp.path().join("killed");
    let mut child = ablate(&config, &killed, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let path = killed.join("results.parquet");
    let started = Instant::now();
    let done_before_kill = loop {
        let n = results::read(&path).map(|f| f.rows.len()).unwrap_or(0);
        if n >= 3 {
            break n;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let survived = results::read(&path).unwrap();
    assert!(survived.rows.len() >= done_before_kill && survived.rows.len() < 10);
    let stamps: Vec<(PathBuf, SystemTime)> = survived
        .rows
        .iter()
        .map(|r| {
            let p = killed
                .join("cells")
                .join(r.cell.dir_name())
                .join("summary.json");
            let t = mtime(&p);
            (p, t)
        })
        .collect();
    // The next cell as SIGKILL leaves it before its first checkpoint: a metrics.parquet, no
    // summary, no state (made deterministic here by planting the finished run's file).
    let whole_rows = results::read(&whole.join("results.parquet")).unwrap().rows;
    let next = whole_rows
        .iter()
        .find(|r| {
            !survived
                .rows
                .iter()
                .any(|s| s.cell.dir_name() == r.cell.dir_name())
        })
        .unwrap();
    let next_dir = killed.join("cells").join(next.cell.dir_name());
    let _ = std::fs::remove_dir_all(&next_dir);
    std::fs::create_dir_all(&next_dir).unwrap();
    std::fs::copy(
        whole
            .join("cells")
            .join(next.cell.dir_name())
            .join("metrics.parquet"),
        next_dir.join("metrics.parquet"),
    )
    .unwrap();
    let stdout = run_ok(&mut ablate(&config, &killed, &["--resume"]));
    assert!(
        stdout.contains(&format!("{} already there", survived.rows.len())),
        "{stdout}"
    );
    for (p, t) in stamps {
        assert_eq!(
            mtime(&p),
            t,
            "{} was rewritten: a finished cell was redone",
            p.display()
        );
    }
    assert_eq!(
        without_timings(&path),
        without_timings(&whole.join("results.parquet"))
    );

    // 3. Two shards, merged, equal the unsharded grid.
    let sharded = tmp.path().join("sharded");
    run_ok(&mut ablate(&config, &sharded, &["--shard", "1/2"]));
    // An incomplete merge is refused, naming what is missing.
    let err = run_err(sift_lab().args(["merge", "--out"]).arg(&sharded));
    assert!(err.contains("misses 5 of 10 cells"), "{err}");
    run_ok(&mut ablate(&config, &sharded, &["--shard", "2/2"]));
    run_ok(sift_lab().args(["merge", "--out"]).arg(&sharded));
    assert_eq!(
        without_timings(&sharded.join("results.parquet")),
        without_timings(&whole.join("results.parquet"))
    );

    // 4. `sift-lab figures` redraws the table and the figure from the Parquet file alone:
    // byte for byte what the grid drew, and the same bytes twice.
    let res = tmp.path().join("results");
    std::fs::create_dir_all(res.join("grid")).unwrap();
    std::fs::copy(
        whole.join("results.parquet"),
        res.join("grid/results.parquet"),
    )
    .unwrap();
    let out = tmp.path().join("figures");
    let figs = || {
        run_ok(
            sift_lab()
                .args(["figures", "--results"])
                .arg(&res)
                .arg("--out")
                .arg(&out),
        );
        all_files(&out)
    };
    let (first, second) = (figs(), figs());
    let names =
        |files: &[(PathBuf, Vec<u8>)]| files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&first), names(&second));
    for (a, b) in first.iter().zip(&second) {
        assert!(a.1 == b.1, "{} differs between two draws", a.0.display());
    }
    for name in ["table.md", "fig6_budget_rte.png", "fig6_budget_mrpc.svg"] {
        assert!(
            std::fs::read(out.join("grid").join(name)).unwrap()
                == std::fs::read(whole.join(name)).unwrap(),
            "{name} differs from what the grid drew"
        );
    }
    let a = out;
    let readme = std::fs::read_to_string(a.join("README.md")).unwrap();
    assert!(
        readme.contains("## grid") && readme.contains("ablate") && readme.contains("--random"),
        "{readme}"
    );
}

/// The README's main job at the `quick` preset: every ablation config of analyses/ end to end
/// on real data, `sift-lab figures` over the results, and the notebooks run against them.
#[test]
fn the_quick_presets_reproduce_every_table_and_figure_and_the_notebooks_run() {
    let tmp = common::temp_dir("ablate-quick");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let res = tmp.path().join("results");
    for (item, random) in [
        ("table4-modules", true),
        ("fig6-budget", true),
        ("table2-glue", false),
    ] {
        let mut cmd = sift_lab();
        cmd.args(["--threads", "2", "ablate"])
            .arg(root.join("analyses").join(format!("{item}.toml")))
            .args(["--preset", "quick", "--out"])
            .arg(res.join(item));
        if random {
            cmd.arg("--random");
        }
        let stdout = run_ok(&mut cmd);
        assert!(stdout.contains("0 diverged"), "{item}: {stdout}");
    }
    let figures = tmp.path().join("figures");
    run_ok(
        sift_lab()
            .args(["figures", "--results"])
            .arg(&res)
            .arg("--out")
            .arg(&figures),
    );
    let readme = std::fs::read_to_string(figures.join("README.md")).unwrap();
    for item in ["table4-modules", "fig6-budget", "table2-glue"] {
        assert!(figures.join(item).join("table.md").is_file(), "{item}");
        assert!(readme.contains(&format!("## {item}")), "{readme}");
    }
    assert!(figures.join("fig6-budget/fig6_budget.png").is_file());
    // Table 2 covers every task of the shared GLUE copy, each with the paper's value beside it.
    let table2 = std::fs::read_to_string(figures.join("table2-glue/table.md")).unwrap();
    for (method, paper) in [("full", "86.6"), ("LoRA", "85.2"), ("SIFT", "85.9")] {
        let line = table2
            .lines()
            .find(|l| l.starts_with(&format!("| {method} |")))
            .unwrap_or_else(|| panic!("{table2}"));
        assert!(line.contains(paper), "{line}");
    }
    run_notebooks(&res.join("table4-modules"), &res.join("fig6-budget"));
}

/// Creates the notebooks' Python environment if needed (scripts/notebooks-venv.sh) and executes
/// every notebook; one that raises fails the test.
fn run_notebooks(ablate_dir: &Path, fig6_dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = std::process::Command::new("bash")
        .arg(root.join("scripts/notebooks-venv.sh"))
        .output()
        .unwrap();
    assert!(
        venv.status.success(),
        "scripts/notebooks-venv.sh failed (it needs python3 and PyPI): {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let python = root.join(String::from_utf8(venv.stdout).unwrap().trim());
    let mut notebooks: Vec<PathBuf> = std::fs::read_dir(root.join("notebooks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ipynb"))
        .collect();
    notebooks.sort();
    assert!(notebooks.len() >= 3, "{notebooks:?}");
    let out = std::process::Command::new(python)
        .arg(root.join("scripts/run_notebooks.py"))
        .args(&notebooks)
        .env("SIFT_ABLATE_DIR", ablate_dir)
        .env("SIFT_FIG6_DIR", fig6_dir)
        .env("SIFT_GRAD_STATS_DIR", root.join("results/grad-stats-mrpc"))
        .env("MPLBACKEND", "Agg")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a notebook failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_config_with_a_wrong_key_fails_naming_file_line_and_key() {
    let tmp = common::temp_dir("ablate-config");
    let path = tmp.path().join("bad.toml");
    std::fs::write(
        &path,
        GRID.replace("max_len = 64", "max_len = 64\nmax_length = 64"),
    )
    .unwrap();
    let err = run_err(&mut ablate(&path, &tmp.path().join("out"), &[]));
    assert!(
        err.contains("bad.toml")
            && err.contains("line 8")
            && err.contains("max_length")
            && err.contains("max_len"),
        "{err}"
    );
    // Nothing was started.
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn every_analysis_config_parses_with_every_preset_and_matches_its_budgets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("analyses");
    for name in [
        "table2-glue.toml",
        "table4-modules.toml",
        "fig6-budget.toml",
    ] {
        for preset in ["quick", "cpu", "paper"] {
            let mut config = sift_lab::ablate::config::load(&root.join(name), Some(preset))
                .unwrap_or_else(|e| panic!("{name} --preset {preset}: {e:#}"));
            config.random = true;
            let grid = sift_lab::ablate::cells::expand(&config).unwrap();
            assert!(!grid.cells.is_empty());
            for cell in &grid.cells {
                if let Some(gap) = cell.budget_gap() {
                    assert!(gap.abs() <= 1.0, "{name}: {cell:?}");
                }
            }
        }
    }
    // Table 4 on MiniLM-L6 at 28,300 (cpu preset): W_v 6 × 4,717 = 28,302; W_q,v 12 × 2,358 =
    // 28,296; W_q,k,v 18 × 1,572 = 28,296; W_q,k,v,o 24 × 1,179 = 28,296 (1,180 → 28,320 is
    // further); W_all 24 × (1,176 + 3) = 28,296 (a bias of 384 buys ⌊384 r⌋ = 3).
    let config =
        sift_lab::ablate::config::load(&root.join("table4-modules.toml"), Some("cpu")).unwrap();
    let grid = sift_lab::ablate::cells::expand(&config).unwrap();
    let achieved = |modules: &str| {
        grid.cells
            .iter()
            .find(|c| c.modules.as_deref() == Some(modules))
            .unwrap()
            .achieved
    };
    assert_eq!(achieved("v"), 28_302);
    assert_eq!(achieved("q,v"), 28_296);
    assert_eq!(achieved("q,k,v"), 28_296);
    assert_eq!(achieved("q,k,v,o"), 28_296);
    assert_eq!(achieved("attention"), 28_296);
}

#[test]
fn a_diverged_cell_is_recorded_and_the_grid_goes_on() {
    let tmp = common::temp_dir("ablate-diverge");
    let config = tmp.path().join("diverge.toml");
    // lr 1e30 sends the selected weights to ±1e30 after one step: attention scores overflow
    // to ±inf and the loss becomes NaN. The second learning rate trains normally.
    let text = GRID
        .replace("tasks = [\"rte\", \"mrpc\"]", "tasks = [\"rte\"]")
        .replace("methods = [\"sift\", \"head\"]", "methods = [\"sift\"]")
        .replace("budgets = [2000, 20000]", "budgets = [2000]")
        .replace("sift = [5e-3]", "sift = [1e30, 5e-3]");
    std::fs::write(&config, text).unwrap();
    let out = tmp.path().join("out");
    let mut cmd = sift_lab();
    cmd.args(["--threads", "1", "ablate"])
        .arg(&config)
        .arg("--out")
        .arg(&out);
    let stdout = run_ok(&mut cmd);
    assert!(stdout.contains("1 diverged"), "{stdout}");
    let file = results::read(&out.join("results.parquet")).unwrap();
    let status: Vec<(&str, f64)> = file
        .rows
        .iter()
        .map(|r| (r.status.as_str(), r.cell.lr))
        .collect();
    assert_eq!(status, vec![("diverged", 1e30), ("completed", 5e-3)]);
    assert!(file.rows[0].best_primary().is_none() && file.rows[1].best_primary().is_some());
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.contains("(lr 5e-3; 1 diverged)"), "{table}");
}

/// Copies a folder tree (the cells of a grid).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
