//! Bad input against the real binary, one table per command: corrupt data, a corrupt model, bad
//! flags, divergence, interruption, concurrent writers and output collisions. Every case checks
//! the exit status, that the message names the file, line or flag, that nothing panicked, and
//! that no earlier output changed (every file under the protected folders hashed before and
//! after). Small on purpose: a few RTE rows, short sequences, the `head` method.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use common::sift_lab;

/// Every file under `dir` with a hash of its bytes; lock files hold no result and are left out.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if !sift_lab::run_lock::is_lock_file(&path) {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&path).unwrap().hash(&mut h);
                files.insert(path, h.finish());
            }
        }
    }
    files
}

/// One bad invocation and what it must give.
struct Case {
    what: &'static str,
    args: Vec<OsString>,
    /// Exit status: 1 for a refused run, 2 for a flag clap rejects.
    code: i32,
    /// Each must appear in stderr.
    says: Vec<String>,
}

/// Runs every case; `protected` folders must be byte for byte the same afterwards.
fn check(cases: &[Case], protected: &[&Path]) {
    let before: Vec<_> = protected.iter().map(|d| snapshot(d)).collect();
    let mut failures = Vec::new();
    for c in cases {
        let out = sift_lab().args(&c.args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        let missing: Vec<&String> = c
            .says
            .iter()
            .filter(|s| !stderr.contains(s.as_str()))
            .collect();
        if code != Some(c.code) || !missing.is_empty() || stderr.contains("panicked") {
            failures.push(format!(
                "{}: exit {code:?} (want {}), missing {missing:?}\n{stderr}",
                c.what, c.code
            ));
        }
    }
    for (dir, before) in protected.iter().zip(&before) {
        assert_eq!(&snapshot(dir), before, "{} changed", dir.display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// A GLUE folder whose RTE train split is the first 40 real rows and whose dev split is `dev`.
fn glue_with_dev(root: &Path, name: &str, dev: &[u8]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("RTE")).unwrap();
    let train = std::fs::read_to_string(common::glue_dir().join("RTE/train.tsv")).unwrap();
    let head: Vec<&str> = train.lines().take(41).collect();
    std::fs::write(dir.join("RTE/train.tsv"), head.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("RTE/dev.tsv"), dev).unwrap();
    dir
}

/// The bad data sets: (name, dev.tsv bytes).
fn bad_dev_files() -> Vec<(&'static str, Vec<u8>)> {
    let header = b"index\tsentence1\tsentence2\tlabel\n".to_vec();
    let mut latin1 = header.clone();
    latin1.extend_from_slice(b"0\tA man sleeps.\tA man rests.\tentailment\n1\tCaf");
    latin1.push(0xe9);
    latin1.extend_from_slice(b" noir.\tA drink.\tentailment\n");
    let mut short = header.clone();
    short.extend_from_slice(b"0\tA man sleeps.\tA man rests.\tentailment\n1\tonly two\n");
    let mut label = header.clone();
    label.extend_from_slice(b"0\tA man sleeps.\tA man rests.\tmaybe\n");
    vec![
        ("empty", vec![]),
        ("header-only", header),
        ("latin1", latin1),
        ("short-row", short),
        ("bad-label", label),
    ]
}

/// A copy of the default model's files (config, weights, tokenizer) that tests may damage.
fn model_copy(dir: &Path) -> PathBuf {
    let files = sift_lab::hub::resolve(&common::default_model()).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(&files.config, dir.join("config.json")).unwrap();
    std::fs::copy(&files.weights[0], dir.join("model.safetensors")).unwrap();
    std::fs::copy(files.tokenizer.unwrap(), dir.join("tokenizer.json")).unwrap();
    dir.to_path_buf()
}

fn glue() -> PathBuf {
    common::glue_dir()
}

/// `args` with each `--flag value` of `pairs` set: the value replaced where the flag is already
/// there (clap refuses a flag given twice), appended otherwise. A pair with an empty value is a
/// bare flag.
fn with(args: &[OsString], pairs: &[(&str, &str)]) -> Vec<OsString> {
    let mut args = args.to_vec();
    for &(flag, value) in pairs {
        match args.iter().position(|a| a == flag) {
            Some(at) if !value.is_empty() => args[at + 1] = value.into(),
            Some(_) => {}
            None => {
                args.push(flag.into());
                if !value.is_empty() {
                    args.push(value.into());
                }
            }
        }
    }
    args
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn eval_refuses_bad_input_naming_the_file_line_or_flag() {
    let tmp = common::temp_dir("bad-eval");
    let root = tmp.path();
    let data: Vec<PathBuf> = bad_dev_files()
        .iter()
        .map(|(name, dev)| glue_with_dev(root, name, dev))
        .collect();
    let dev_of = |i: usize| data[i].join("RTE/dev.tsv").display().to_string();
    let model = model_copy(&root.join("model"));
    let truncated = model_copy(&root.join("truncated"));
    let weights = truncated.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let no_config = model_copy(&root.join("no-config"));
    std::fs::write(no_config.join("config.json"), "{\"model_type\": \"bert\"").unwrap();
    // An earlier predictions file that must survive.
    let results = root.join("results");
    std::fs::create_dir_all(&results).unwrap();
    let preds = results.join("preds.parquet");
    common::run_ok(
        sift_lab()
            .args([
                "eval",
                "--task",
                "rte",
                "--limit",
                "8",
                "--max-len",
                "32",
                "--json",
            ])
            .arg("--data-dir")
            .arg(glue())
            .arg("--predictions")
            .arg(&preds),
    );

    let g = glue();
    let base = os(&[
        "eval",
        "--task",
        "rte",
        "--max-len",
        "32",
        "--data-dir",
        path_str(&g),
    ]);
    let on = |i: usize| with(&base, &[("--data-dir", path_str(&data[i]))]);
    let cases = vec![
        Case {
            what: "empty dev file",
            args: on(0),
            code: 1,
            says: vec![dev_of(0), "no examples".into()],
        },
        Case {
            what: "header-only dev file",
            args: on(1),
            code: 1,
            says: vec![dev_of(1), "no examples".into()],
        },
        Case {
            what: "a byte that is not UTF-8",
            args: on(2),
            code: 1,
            says: vec![dev_of(2), "line 3".into(), "not UTF-8".into()],
        },
        Case {
            what: "a row with too few columns",
            args: on(3),
            code: 1,
            says: vec![dev_of(3), "line 3".into()],
        },
        Case {
            what: "an unknown label",
            args: on(4),
            code: 1,
            says: vec![dev_of(4), "line 2".into(), "'maybe'".into()],
        },
        Case {
            what: "--limit 0",
            args: with(&base, &[("--limit", "0")]),
            code: 1,
            says: vec!["--limit 0".into()],
        },
        Case {
            what: "--batch-size 0",
            args: with(&base, &[("--limit", "4"), ("--batch-size", "0")]),
            code: 1,
            says: vec!["--batch-size".into()],
        },
        Case {
            what: "--max-len 0",
            args: with(&base, &[("--max-len", "0")]),
            code: 1,
            says: vec!["--max-len 0".into()],
        },
        Case {
            what: "--max-len beyond the model",
            args: with(&base, &[("--max-len", "4096")]),
            code: 1,
            says: vec![
                "--max-len 4096".into(),
                "at most 512".into(),
                "config.json".into(),
            ],
        },
        Case {
            what: "--threads 0",
            args: [os(&["--threads", "0"]), base.clone()].concat(),
            code: 1,
            says: vec!["--threads 0".into()],
        },
        Case {
            what: "unknown task",
            args: with(&base, &[("--task", "rtee")]),
            code: 2,
            says: vec!["'rtee'".into(), "--task".into()],
        },
        Case {
            what: "--split test",
            args: with(&base, &[("--split", "test")]),
            code: 2,
            says: vec!["'test'".into(), "--split".into()],
        },
        Case {
            what: "truncated weights",
            args: with(
                &base,
                &[("--limit", "4"), ("--model", path_str(&truncated))],
            ),
            code: 1,
            says: vec![weights.display().to_string(), "truncated or corrupt".into()],
        },
        Case {
            what: "broken config.json",
            args: with(&base, &[("--model", path_str(&no_config))]),
            code: 1,
            says: vec![no_config.join("config.json").display().to_string()],
        },
        Case {
            what: "a checkpoint that does not exist",
            args: with(&base, &[("--checkpoint", "/no/such/checkpoint")]),
            code: 1,
            says: vec!["--checkpoint /no/such/checkpoint".into()],
        },
        Case {
            what: "--predictions over an earlier file",
            args: with(
                &base,
                &[("--limit", "4"), ("--predictions", path_str(&preds))],
            ),
            code: 1,
            says: vec![preds.display().to_string(), "already exists".into()],
        },
    ];
    check(&cases, &[&results, &model, &root.join("latin1")]);
}

/// `sift-lab train` on 40 RTE rows, 16 dev rows, the head method: a second or so.
fn train_args(data: &Path, out: &Path) -> Vec<OsString> {
    os(&[
        "train",
        "--task",
        "rte",
        "--method",
        "head",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-len",
        "32",
        "--lr",
        "1e-3",
        "--train-limit",
        "40",
        "--eval-limit",
        "16",
        "--data-dir",
        path_str(data),
        "--out",
        path_str(out),
    ])
}

#[test]
fn train_refuses_bad_input_and_never_overwrites_a_model_or_a_run() {
    let tmp = common::temp_dir("bad-train");
    let root = tmp.path();
    let data: Vec<PathBuf> = bad_dev_files()
        .iter()
        .map(|(name, dev)| glue_with_dev(root, name, dev))
        .collect();
    let model = model_copy(&root.join("model"));
    let taken = root.join("taken-export");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("model.safetensors"), b"someone else's model").unwrap();
    // A finished run that must survive.
    let done = root.join("done");
    common::run_ok(sift_lab().args(train_args(&glue(), &done)));
    let summary_before = std::fs::read(done.join("summary.json")).unwrap();

    let fresh = |name: &str| root.join("fresh").join(name);
    let t = |data: &Path, out: &Path, pairs: &[(&str, &str)]| with(&train_args(data, out), pairs);
    let g = glue();
    let mut cases = vec![
        Case {
            what: "--export-hf into the --model directory",
            args: t(
                &g,
                &fresh("a"),
                &[
                    ("--model", path_str(&model)),
                    ("--export-hf", path_str(&model)),
                ],
            ),
            code: 1,
            says: vec!["--export-hf".into(), "--model directory".into()],
        },
        Case {
            what: "--export-hf into a directory holding files",
            args: t(&g, &fresh("b"), &[("--export-hf", path_str(&taken))]),
            code: 1,
            says: vec![
                format!("--export-hf {}", taken.display()),
                "already holds files".into(),
            ],
        },
        Case {
            what: "--export-hf = --out",
            args: t(&g, &fresh("c"), &[("--export-hf", path_str(&fresh("c")))]),
            code: 1,
            says: vec!["--out directory".into()],
        },
        Case {
            what: "--out of a finished run without --resume",
            args: t(&g, &done, &[]),
            code: 1,
            says: vec![done.display().to_string(), "--resume".into()],
        },
        Case {
            what: "--resume with other settings",
            args: t(&g, &done, &[("--resume", ""), ("--seed", "7")]),
            code: 1,
            says: vec!["seed: was 42, now 7".into()],
        },
        Case {
            what: "--max-len 0",
            args: t(&g, &fresh("d"), &[("--max-len", "0")]),
            code: 1,
            says: vec!["--max-len 0".into()],
        },
        Case {
            what: "--max-len beyond the model",
            args: t(&g, &fresh("e"), &[("--max-len", "600")]),
            code: 1,
            says: vec!["--max-len 600".into(), "at most 512".into()],
        },
        Case {
            what: "--eval-limit 0",
            args: t(&g, &fresh("f"), &[("--eval-limit", "0")]),
            code: 1,
            says: vec!["--eval-limit 0".into()],
        },
        Case {
            what: "--batch-size 0",
            args: t(&g, &fresh("g"), &[("--batch-size", "0")]),
            code: 1,
            says: vec!["--batch-size".into()],
        },
        Case {
            what: "--lr nan",
            args: t(&g, &fresh("h"), &[("--lr", "nan")]),
            code: 1,
            says: vec!["--lr".into()],
        },
        Case {
            what: "a missing data folder",
            args: t(&root.join("nowhere"), &fresh("i"), &[]),
            code: 1,
            says: vec!["--data-dir".into()],
        },
        Case {
            what: "--rate 2",
            args: t(&g, &fresh("j"), &[("--method", "sift"), ("--rate", "2")]),
            code: 1,
            says: vec!["--rate 2".into()],
        },
        Case {
            what: "--method unknown",
            args: t(&g, &fresh("k"), &[("--method", "magic")]),
            code: 2,
            says: vec!["'magic'".into(), "--method".into()],
        },
    ];
    for (i, (name, _)) in bad_dev_files().iter().enumerate() {
        let dev = data[i].join("RTE/dev.tsv").display().to_string();
        let says = match *name {
            "empty" | "header-only" => vec![dev, "no examples".into()],
            "latin1" | "short-row" => vec![dev, "line 3".into()],
            _ => vec![dev, "line 2".into()],
        };
        cases.push(Case {
            what: name,
            args: t(&data[i], &fresh(name), &[]),
            code: 1,
            says,
        });
    }
    let started = Instant::now();
    check(&cases, &[&model, &taken, &done]);
    // Every refusal comes before any training: none of them trained an epoch.
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
    for name in [
        "a",
        "b",
        "c",
        "d",
        "e",
        "f",
        "g",
        "h",
        "i",
        "empty",
        "header-only",
    ] {
        assert!(
            !fresh(name).join("summary.json").exists(),
            "{name} wrote a summary"
        );
    }

    // Resuming the finished run does nothing and leaves its summary (peak RSS included) alone.
    let mut resume = train_args(&glue(), &done);
    resume.push("--resume".into());
    let stdout = common::run_ok(sift_lab().args(&resume));
    assert_eq!(
        std::fs::read(done.join("summary.json")).unwrap(),
        summary_before
    );
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&summary_before).unwrap();
    assert_eq!(printed, stored);
}

#[test]
fn a_diverging_run_stops_diverged_and_keeps_no_weights() {
    let tmp = common::temp_dir("diverge");
    let out = tmp.path().join("run");
    // 80 rows in batches of 8: 10 steps at an absurd learning rate, no warmup.
    let args = with(
        &train_args(&glue(), &out),
        &[
            ("--lr", "1e4"),
            ("--warmup-ratio", "0"),
            ("--train-limit", "80"),
        ],
    );
    let o = sift_lab().args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("diverged") && stderr.contains("--lr"),
        "{stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "diverged");
    assert_eq!(summary["epochs_completed"], 0);
    assert!(summary["best_epoch"].is_null());
    assert!(!out.join("delta.safetensors").exists());
    assert!(!out.join("state/checkpoint.json").exists());
}

/// Reads a child's stderr until a line contains `needle` (the rest is drained in the
/// background so the child never blocks on a full pipe).
fn wait_for_line(child: &mut Child, needle: &str) -> String {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            std::thread::spawn(move || for _ in lines {});
            return seen;
        }
    }
    panic!("the process ended without printing '{needle}':\n{seen}");
}

fn interrupt(child: &Child) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -INT failed");
}

#[test]
fn ctrl_c_stops_every_command_with_exit_130() {
    let tmp = common::temp_dir("interrupt");
    // train: stops after the current step, writes what is complete, says "interrupted".
    let out = tmp.path().join("train");
    let args = with(
        &train_args(&glue(), &out),
        &[
            ("--train-limit", "2000"),
            ("--batch-size", "4"),
            ("--log-every", "1"),
        ],
    );
    let mut child = sift_lab()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "step 2/");
    interrupt(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "interrupted");

    // eval (no partial results to save): stops at once, no predictions file.
    let preds = tmp.path().join("preds.parquet");
    let mut child = sift_lab()
        .args([
            "eval",
            "--task",
            "sst2",
            "--split",
            "train",
            "--max-len",
            "128",
        ])
        .arg("--data-dir")
        .arg(glue())
        .arg("--predictions")
        .arg(&preds)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    interrupt(&child);
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!preds.exists());

    // landscape: stops after the current point, keeps the finished ones.
    let out = tmp.path().join("landscape");
    let args = landscape_args(&out, &[("--alpha", "0:1:200"), ("--jobs", "1")]);
    let mut child = sift_lab()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "[1/200]");
    interrupt(&child);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let file = sift_lab::landscape::read_file(&out.join("landscape.parquet")).unwrap();
    assert!(!file.rows.is_empty() && file.rows.len() < 200);

    // grad-stats: stops after the current batch, writes the tables of the finished ones.
    let out = tmp.path().join("grad-stats");
    let mut child = sift_lab()
        .args([
            "grad-stats",
            "--task",
            "rte",
            "--batches",
            "5000",
            "--batch-size",
            "4",
        ])
        .args([
            "--max-len",
            "32",
            "--tensors",
            "encoder.layer.0.attention.self.value.weight",
        ])
        .arg("--data-dir")
        .arg(glue())
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    interrupt(&child);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["interrupted"], true, "{summary}");
}

/// The columns of metrics.parquet that do not depend on timing.
fn metric_values(dir: &Path) -> Vec<Vec<Option<f64>>> {
    let df = sift_lab::output::read_parquet(&dir.join("metrics.parquet")).unwrap();
    ["train_loss", "lr", "dev_loss", "dev_accuracy"]
        .iter()
        .map(|c| df.column(c).unwrap().f64().unwrap().iter().collect())
        .collect()
}

#[test]
fn two_writers_into_one_directory_one_runs_the_other_is_refused() {
    let tmp = common::temp_dir("concurrent");
    let (shared, lone) = (tmp.path().join("shared"), tmp.path().join("lone"));
    let args = with(
        &train_args(&glue(), &shared),
        &[("--method", "sift"), ("--train-limit", "64")],
    );
    let spawn = |args: &[OsString]| {
        sift_lab()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(&args), spawn(&args));
    let (pa, pb) = (a.id(), b.id());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let outcomes = [(a, pb), (b, pa)];
    let winners: Vec<_> = outcomes
        .iter()
        .filter(|(o, _)| o.status.success())
        .collect();
    let losers: Vec<_> = outcomes
        .iter()
        .filter(|(o, _)| !o.status.success())
        .collect();
    assert_eq!(
        (winners.len(), losers.len()),
        (1, 1),
        "exactly one run succeeds"
    );
    let (loser, winner_pid) = losers[0];
    let stderr = String::from_utf8_lossy(&loser.stderr);
    assert_eq!(loser.status.code(), Some(1));
    assert!(
        stderr.contains(&shared.display().to_string())
            && stderr.contains("is in use")
            && stderr.contains(&format!("process {winner_pid}")),
        "{stderr}"
    );

    // The survivor's results are a lone run's.
    let lone_args = with(&args, &[("--out", path_str(&lone))]);
    common::run_ok(sift_lab().args(&lone_args));
    assert_eq!(metric_values(&shared), metric_values(&lone));
    let read = |dir: &Path| {
        candle_core::safetensors::load(dir.join("delta.safetensors"), &Device::Cpu).unwrap()
    };
    let (x, y) = (read(&shared), read(&lone));
    assert_eq!(x.len(), y.len());
    for (name, t) in &x {
        let (t, u) = (
            t.to_dtype(DType::F64).unwrap(),
            y[name].to_dtype(DType::F64).unwrap(),
        );
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            u.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            "{name}"
        );
    }
}

/// `sift-lab landscape` on 16 RTE rows: a 3-point line.
fn landscape_args(out: &Path, pairs: &[(&str, &str)]) -> Vec<OsString> {
    let base = os(&[
        "landscape",
        "--task",
        "rte",
        "--dims",
        "1",
        "--alpha",
        "0:1:3",
        "--eval-examples",
        "16",
        "--batch-size",
        "8",
        "--max-len",
        "32",
        "--no-plot",
        "--data-dir",
        path_str(&glue()),
        "--out",
        path_str(out),
    ]);
    with(&base, pairs)
}

#[test]
fn landscape_and_merge_refuse_bad_input_and_concurrent_writers() {
    let tmp = common::temp_dir("bad-landscape");
    let root = tmp.path();
    let done = root.join("done");
    common::run_ok(sift_lab().args(landscape_args(&done, &[])));
    let fresh = root.join("fresh");
    let cases = vec![
        Case {
            what: "an existing grid without --resume",
            args: landscape_args(&done, &[]),
            code: 1,
            says: vec![
                done.join("landscape.parquet").display().to_string(),
                "--resume".into(),
            ],
        },
        Case {
            what: "--max-len beyond the model",
            args: landscape_args(&fresh, &[("--max-len", "1024")]),
            code: 1,
            says: vec!["--max-len 1024".into()],
        },
        Case {
            what: "--eval-examples 0",
            args: landscape_args(&fresh, &[("--eval-examples", "0")]),
            code: 1,
            says: vec!["--eval-examples".into()],
        },
        Case {
            what: "--batch-size 0",
            args: landscape_args(&fresh, &[("--batch-size", "0")]),
            code: 1,
            says: vec!["--batch-size".into()],
        },
        Case {
            what: "a reversed grid",
            args: landscape_args(&fresh, &[("--alpha", "1:0:3")]),
            code: 1,
            says: vec!["--alpha".into()],
        },
        Case {
            what: "--shard 3/2",
            args: landscape_args(&fresh, &[("--shard", "3/2")]),
            code: 1,
            says: vec!["--shard '3/2'".into()],
        },
        Case {
            what: "merge of a shard file that does not exist",
            args: vec![
                "merge".into(),
                "--out".into(),
                done.clone().into(),
                root.join("no-such-shard.parquet").into(),
            ],
            code: 1,
            says: vec!["no-such-shard.parquet".into()],
        },
    ];
    check(&cases, &[&done]);

    // Two whole-grid writers into one directory: one runs, one is refused.
    let shared = root.join("shared");
    let spawn = |args: Vec<OsString>| {
        sift_lab()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (
        spawn(landscape_args(&shared, &[])),
        spawn(landscape_args(&shared, &[])),
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(
        [a.status.success(), b.status.success()]
            .iter()
            .filter(|&&s| s)
            .count(),
        1,
        "exactly one of two writers runs"
    );
    let loser = if a.status.success() { &b } else { &a };
    let stderr = String::from_utf8_lossy(&loser.stderr);
    assert!(
        stderr.contains("is in use") && stderr.contains("landscape.parquet"),
        "{stderr}"
    );

    // Shards of one grid write separate files and never contend; the merge refuses to
    // replace a merged file.
    let shards = root.join("shards");
    let (a, b) = (
        spawn(landscape_args(&shards, &[("--shard", "1/2")])),
        spawn(landscape_args(&shards, &[("--shard", "2/2")])),
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    common::run_ok(
        sift_lab()
            .args(["merge", "--no-plot", "--out"])
            .arg(&shards),
    );
    let merged = snapshot(&shards);
    let err = common::run_err(
        sift_lab()
            .args(["merge", "--no-plot", "--out"])
            .arg(&shards),
    );
    assert!(
        err.contains("already exists") && err.contains("landscape.parquet"),
        "{err}"
    );
    assert_eq!(snapshot(&shards), merged);
}

#[test]
fn grad_stats_bench_and_configs_refuse_bad_input() {
    let tmp = common::temp_dir("bad-misc");
    let root = tmp.path();
    let gs = |out: &Path, pairs: &[(&str, &str)]| -> Vec<OsString> {
        let base = os(&[
            "grad-stats",
            "--task",
            "rte",
            "--batches",
            "2",
            "--batch-size",
            "4",
            "--max-len",
            "32",
            "--tensors",
            "encoder.layer.0.attention.self.value.weight",
            "--data-dir",
            path_str(&glue()),
            "--out",
            path_str(out),
        ]);
        with(&base, pairs)
    };
    let done = root.join("gs-done");
    common::run_ok(sift_lab().args(gs(&done, &[])));
    let config = root.join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "# an eval with a bad length\ncommand = \"eval\"\n[args]\ntask = \"rte\"\nlimit = 4\nmax_len = 0\ndata_dir = {:?}\n",
            glue().display().to_string()
        ),
    )
    .unwrap();
    let bad_value = root.join("bad-value.toml");
    std::fs::write(
        &bad_value,
        "command = \"eval\"\n[args]\ntask = \"rte\"\n\nbatch_size = \"many\"\n",
    )
    .unwrap();
    let cases = vec![
        Case {
            what: "grad-stats over an earlier run",
            args: gs(&done, &[]),
            code: 1,
            says: vec![done.display().to_string(), "already exists".into()],
        },
        Case {
            what: "grad-stats --max-len beyond the model",
            args: gs(&root.join("gs-a"), &[("--max-len", "513")]),
            code: 1,
            says: vec!["--max-len 513".into()],
        },
        Case {
            what: "grad-stats --batch-size 0",
            args: gs(&root.join("gs-b"), &[("--batch-size", "0")]),
            code: 1,
            says: vec!["--batch-size".into()],
        },
        Case {
            what: "bench --batch-size 0",
            args: ["bench", "--batch-size", "0"].map(OsString::from).to_vec(),
            code: 1,
            says: vec!["--batch-size 0".into()],
        },
        Case {
            what: "bench --seq-len 0",
            args: ["bench", "--seq-len", "0"].map(OsString::from).to_vec(),
            code: 1,
            says: vec!["--seq-len 0".into()],
        },
        Case {
            what: "bench --seq-len beyond the model",
            args: ["bench", "--seq-len", "1000", "--iters", "1"]
                .map(OsString::from)
                .to_vec(),
            code: 1,
            says: vec!["--seq-len 1000".into(), "at most 512".into()],
        },
        Case {
            what: "a config with a bad value",
            args: vec!["run".into(), config.clone().into()],
            code: 1,
            says: vec![
                format!("{}, line 6: `max_len = 0`", config.display()),
                "--max-len 0: must be at least 8".into(),
            ],
        },
        Case {
            what: "a config value clap rejects",
            args: vec!["run".into(), bad_value.clone().into()],
            code: 1,
            says: vec![format!("{}, line 5", bad_value.display()), "'many'".into()],
        },
    ];
    check(&cases, &[&done]);
}
