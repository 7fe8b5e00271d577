//! `sift-lab landscape` and `sift-lab merge` on the real default model and real GLUE data:
//! end points against `sift-lab eval` and θ0, the direction constructions on hand-worked
//! tensors, resume after a killed run, shards, and the errors for bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::{run_err, run_ok, sift_lab};
use sift_lab::data::{Split, Task};
use sift_lab::eval;
use sift_lab::landscape::{self, Directions, Filter1d, LandscapeConfig, Range, Row};
use sift_lab::plot::landscape::{color, z_range};
use sift_lab::plot::svg;

/// `sift-lab landscape` on RTE train with a small evaluation set, and the given extra flags.
fn landscape(out: &Path, examples: usize, extra: &[&str]) -> Command {
    let mut cmd = sift_lab();
    cmd.args([
        "landscape",
        "--task",
        "rte",
        "--max-len",
        "64",
        "--batch-size",
        "8",
    ])
    .args(["--eval-examples", &examples.to_string()])
    .arg("--data-dir")
    .arg(common::glue_dir())
    .arg("--out")
    .arg(out)
    .args(extra);
    cmd
}

/// `sift-lab eval --json` on the first `n` RTE train examples (the landscape tests' set), of the
/// default model or of `checkpoint`.
fn eval_report(n: usize, checkpoint: Option<&Path>) -> serde_json::Value {
    let mut cmd = sift_lab();
    cmd.args([
        "eval",
        "--task",
        "rte",
        "--split",
        "train",
        "--max-len",
        "64",
    ])
    .args(["--batch-size", "8", "--limit", &n.to_string(), "--json"])
    .arg("--data-dir")
    .arg(common::glue_dir());
    if let Some(c) = checkpoint {
        cmd.arg("--checkpoint").arg(c);
    }
    serde_json::from_str(&run_ok(&mut cmd)).unwrap()
}

fn rows(path: &Path) -> Vec<Row> {
    landscape::read_file(path).unwrap().rows
}

/// Rows without their timings, sorted by point.
fn values(rows: &[Row]) -> Vec<Row> {
    let mut v: Vec<Row> = rows.iter().map(Row::values).collect();
    v.sort_by_key(|r| r.point);
    v
}

#[test]
fn alpha_one_is_sift_lab_eval_and_alpha_zero_is_theta0() {
    let dir = common::temp_dir("landscape-ends");
    let n = 24;
    run_ok(&mut landscape(
        dir.path(),
        n,
        &["--dims", "1", "--alpha", "0:1:3", "--no-plot", "--json"],
    ));
    let file = landscape::read_file(&dir.path().join("landscape.parquet")).unwrap();
    assert_eq!(file.rows.len(), 3);
    let at = |alpha: f64| file.rows.iter().find(|r| r.alpha == alpha).unwrap().clone();
    // The metadata holds the full configuration and the tool version.
    assert_eq!(file.config.eval_examples, n);
    assert_eq!(file.config.alpha, Range::parse("0:1:3").unwrap());
    let metadata = sift_lab::output::read_metadata(&file.path).unwrap();
    assert!(metadata
        .iter()
        .any(|(k, v)| k == sift_lab::output::VERSION_KEY && v == env!("CARGO_PKG_VERSION")));

    // α = 1 against the `sift-lab eval` binary on the same examples.
    let report = eval_report(n, None);
    let one = at(1.0);
    assert_eq!(one.n_examples, n);
    let eval_loss = report["mean_loss"].as_f64().unwrap();
    assert!(
        (one.loss - eval_loss).abs() < 1e-6,
        "α = 1: {} vs sift-lab eval {eval_loss}",
        one.loss
    );
    assert_eq!(one.metric, report["metrics"]["accuracy"].as_f64().unwrap());

    // α = 0 against θ0 evaluated directly, and α = 0.5 against weights built by hand.
    let pretrained = common::pretrained(2);
    let dataset = common::dataset(&pretrained, Task::Rte, Split::Train, 64, n);
    let theta0 = pretrained.theta0(0).unwrap();
    let (scores, _) = eval::evaluate(
        &pretrained.build(&theta0).unwrap(),
        &dataset,
        8,
        &Device::Cpu,
        false,
    )
    .unwrap();
    let zero = at(0.0);
    assert!(
        (zero.loss - scores.mean_loss).abs() < 1e-6,
        "α = 0: {} vs θ0 {}",
        zero.loss,
        scores.mean_loss
    );
    assert_eq!(zero.metric, scores.metrics["accuracy"]);
    let mut half = theta0.clone();
    for (name, t0) in &theta0 {
        if !name.starts_with("classifier") {
            let t1 = &pretrained.weights[name];
            half.insert(
                name.clone(),
                (t0 + ((t1 - t0).unwrap() * 0.5).unwrap()).unwrap(),
            );
        }
    }
    let (scores, _) = eval::evaluate(
        &pretrained.build(&half).unwrap(),
        &dataset,
        8,
        &Device::Cpu,
        false,
    )
    .unwrap();
    assert!(
        (at(0.5).loss - scores.mean_loss).abs() < 1e-5,
        "α = 0.5: {} vs θ0 + 0.5·δ1 {}",
        at(0.5).loss,
        scores.mean_loss
    );
    // The end points differ: the landscape is not flat by construction.
    assert!((zero.loss - one.loss).abs() > 1e-6);
}

/// `--head-from`: the α = 1 point is `sift-lab eval --checkpoint` of the trained-head export,
/// the head really is the trained one, and a checkpoint without a trained head is refused.
#[test]
fn head_from_uses_the_trained_head_of_a_train_export() {
    let dir = common::temp_dir("landscape-head");
    let export = dir.path().join("hf");
    run_ok(
        sift_lab()
            .args([
                "train", "--task", "rte", "--method", "head", "--epochs", "1",
            ])
            .args([
                "--train-limit",
                "64",
                "--eval-limit",
                "16",
                "--batch-size",
                "16",
            ])
            .args(["--max-len", "64", "--lr", "1e-2", "--seed", "3"])
            .arg("--data-dir")
            .arg(common::glue_dir())
            .arg("--out")
            .arg(dir.path().join("run"))
            .arg("--export-hf")
            .arg(&export),
    );
    let n = 24;
    let out = dir.path().join("ls");
    // A 2-point line (α = 0, 1) with the head of checkpoint `head`.
    let with_head = |out: &Path, head: &Path| {
        let mut cmd = landscape(out, n, &["--dims", "1", "--alpha", "0:1:2", "--no-plot"]);
        cmd.arg("--head-from").arg(head);
        cmd
    };
    run_ok(&mut with_head(&out, &export));
    let file = landscape::read_file(&out.join("landscape.parquet")).unwrap();
    assert_eq!(file.config.head_from.as_deref(), Some(export.as_path()));
    let one = file.rows.iter().find(|r| r.alpha == 1.0).unwrap();
    let eval = |checkpoint| eval_report(n, checkpoint)["mean_loss"].as_f64().unwrap();
    let trained = eval(Some(&export));
    assert!(
        (one.loss - trained).abs() < 1e-6,
        "α = 1 with --head-from: {} vs eval --checkpoint {trained}",
        one.loss
    );
    let seeded = eval(None);
    assert!(
        (trained - seeded).abs() > 1e-4,
        "the trained head should change the loss ({trained} vs {seeded})"
    );

    // A checkpoint whose classifier is not trained (the pretrained encoder alone) is refused.
    let snapshot = sift_lab::hub::resolve(&common::default_model())
        .unwrap()
        .dir()
        .to_path_buf();
    let err = run_err(&mut with_head(&dir.path().join("bad"), &snapshot));
    assert!(
        err.contains("--head-from") && err.contains("no trained"),
        "{err}"
    );
}

fn t2(values: &[f32], rows: usize, cols: usize) -> Tensor {
    Tensor::from_vec(values.to_vec(), (rows, cols), &Device::Cpu).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert!(!want.is_empty());
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
}

#[test]
fn delta2_and_filter_normalisation_on_hand_worked_tensors() {
    // δ2 = d ⊙ δ1, entry by entry.
    let delta1 = t2(&[1.0, -2.0, 3.0, 0.5], 2, 2);
    let d = t2(&[2.0, 0.5, -1.0, 4.0], 2, 2);
    let delta2 = landscape::paper_delta2(&delta1, &d).unwrap();
    assert_eq!(to_vec(&delta2), vec![2.0, -1.0, -3.0, 2.0]);

    // Rows of d: (3, 4) has norm 5, (0, 2) norm 2; rows of w: (6, 8) norm 10, (1, 0) norm 1.
    // Each row of d is rescaled to its row of w: (3, 4)·10/5 = (6, 8), (0, 2)·1/2 = (0, 1).
    let d = t2(&[3.0, 4.0, 0.0, 2.0], 2, 2);
    let w = t2(&[6.0, 8.0, 1.0, 0.0], 2, 2);
    let normed = landscape::filter_normalize(&d, &w, Filter1d::Zero).unwrap();
    assert_close(&to_vec(&normed), &[6.0, 8.0, 0.0, 1.0]);
    // A filter is everything but the first dimension: the same numbers as a (2, 1, 2) tensor.
    let normed3 = landscape::filter_normalize(
        &d.reshape((2, 1, 2)).unwrap(),
        &w.reshape((2, 1, 2)).unwrap(),
        Filter1d::Zero,
    )
    .unwrap();
    assert_eq!(normed3.dims(), &[2, 1, 2]);
    assert_close(&to_vec(&normed3), &[6.0, 8.0, 0.0, 1.0]);
    // 1-D tensors (biases, LayerNorm): direction 0, or the tensor itself.
    let d1 = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
    let b = Tensor::new(&[0.5f32, -0.25], &Device::Cpu).unwrap();
    let zero = landscape::filter_normalize(&d1, &b, Filter1d::Zero).unwrap();
    assert_eq!(to_vec(&zero), vec![0.0, 0.0]);
    let same = landscape::filter_normalize(&d1, &b, Filter1d::Weight).unwrap();
    assert_eq!(to_vec(&same), vec![0.5, -0.25]);
}

/// The same constructions inside the real model's surface: the β direction of `paper` is the
/// seeded d times θ1 − θ0, and `filter-normalized` steps have θ1's row norms.
#[test]
fn surfaces_of_the_real_model_follow_the_definitions() {
    let pretrained = common::pretrained(2);
    let theta0 = pretrained.theta0(0).unwrap();
    let name = "encoder.layer.2.attention.self.value.weight";
    let sub = |a: &Tensor, b: &Tensor| to_vec(&(a - b).unwrap());

    let mut config = LandscapeConfig::new(Task::Rte, Path::new("."), 2);
    config.tensors = Some("encoder.layer.2.attention.self.*, embeddings.LayerNorm.*".into());
    let surface = landscape::prepare_surface(&config, &pretrained, None).unwrap();
    assert_eq!(surface.moving_names().len(), 8);
    let origin = surface.weights_at(0.0, 0.0).unwrap();
    let beta1 = surface.weights_at(0.0, 1.0).unwrap();
    let d = landscape::gaussian("d", name, &[384, 384], 0, &Device::Cpu).unwrap();
    let delta1 = (&pretrained.weights[name] - &theta0[name]).unwrap();
    let want = to_vec(&(&d * &delta1).unwrap());
    assert_close(&sub(&beta1[name], &origin[name]), &want);
    // α = 0 is θ0 for the moving tensors; the others stay at θ1; the head never moves.
    assert_eq!(to_vec(&origin[name]), to_vec(&theta0[name]));
    let fixed = "encoder.layer.3.attention.self.value.weight";
    assert_eq!(to_vec(&origin[fixed]), to_vec(&pretrained.weights[fixed]));
    assert_eq!(
        to_vec(&origin["classifier.weight"]),
        to_vec(&pretrained.weights["classifier.weight"])
    );

    config.directions = Directions::FilterNormalized;
    let surface = landscape::prepare_surface(&config, &pretrained, None).unwrap();
    let at0 = surface.weights_at(0.0, 0.0).unwrap();
    let step = surface.weights_at(1.0, 0.0).unwrap();
    assert_eq!(to_vec(&at0[name]), to_vec(&pretrained.weights[name]));
    let d1 = (&step[name] - &at0[name]).unwrap();
    let norms = |t: &Tensor| to_vec(&t.sqr().unwrap().sum(1).unwrap().sqrt().unwrap());
    let (got, want) = (norms(&d1), norms(&pretrained.weights[name]));
    assert_eq!((got.len(), want.len()), (384, 384));
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() < 1e-3 * w.max(1.0),
            "row norm {g} vs θ1's {w}"
        );
    }
    // LayerNorm (1-D) does not move under filter normalisation (Li et al.'s ignore='biasbn').
    let ln = "embeddings.LayerNorm.weight";
    assert_eq!(to_vec(&step[ln]), to_vec(&pretrained.weights[ln]));
}

/// Waits until the run's Parquet file holds at least one row.
fn wait_for_rows(path: &Path, child: &mut std::process::Child) -> usize {
    let start = Instant::now();
    loop {
        if let Ok(file) = landscape::read_file(path) {
            if !file.rows.is_empty() {
                return file.rows.len();
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before any row was on disk");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no row after 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn resume_after_a_killed_run_equals_a_clean_run() {
    let killed = common::temp_dir("landscape-killed");
    let clean = common::temp_dir("landscape-clean");
    let grid = [
        "--dims",
        "2",
        "--alpha",
        "-0.5:1.5:4",
        "--beta",
        "-1:1:3",
        "--no-plot",
    ];
    let path = killed.path().join("landscape.parquet");

    let mut child = landscape(killed.path(), 32, &grid)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_rows(&path, &mut child);
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let survived = rows(&path).len();
    assert!(
        (1..12).contains(&survived),
        "{survived} rows after the kill: the run was not interrupted mid-grid"
    );

    // Without --resume the directory is not overwritten.
    let err = run_err(&mut landscape(killed.path(), 32, &grid));
    assert!(
        err.contains("already exists") && err.contains("--resume"),
        "{err}"
    );
    // A different configuration is refused, naming the key.
    let mut other = grid.to_vec();
    other.push("--resume");
    let err = run_err(&mut landscape(killed.path(), 16, &other));
    assert!(err.contains("eval_examples"), "{err}");

    let stdout = run_ok(&mut landscape(killed.path(), 32, &other));
    assert!(
        stdout.contains(&format!(
            "{} computed now, {survived} already there",
            12 - survived
        )),
        "{stdout}"
    );
    run_ok(&mut landscape(clean.path(), 32, &grid));
    let (resumed, whole) = (rows(&path), rows(&clean.path().join("landscape.parquet")));
    assert_eq!((resumed.len(), whole.len()), (12, 12));
    assert_eq!(values(&resumed), values(&whole));
    // A second resume has nothing to do.
    let stdout = run_ok(&mut landscape(killed.path(), 32, &other));
    assert!(
        stdout.contains("0 computed now, 12 already there"),
        "{stdout}"
    );
}

/// Width and height of a PNG (its IHDR chunk).
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

const LOSS_BLUE: &str = "#1F77B4";

/// The 1-D figure of a `paper` grid with `n` α values from 0 to 1: the loss polyline has one
/// vertex per α, one dot per point, and θ0 / θ1 are labelled beside their lines at α = 0 (the
/// first vertex) and α = 1 (the last).
fn check_line_figure(text: &str, n: usize) {
    let lines: Vec<svg::Element> = svg::elements(text, "polyline")
        .into_iter()
        .filter(|e| e.attr("stroke") == LOSS_BLUE && e.attr("stroke-width") == "3")
        .collect();
    assert_eq!(lines.len(), 1, "one loss curve");
    let pts = lines[0].points();
    assert_eq!(pts.len(), n, "{pts:?}");
    assert!(pts.windows(2).all(|w| w[0].0 < w[1].0), "{pts:?}");
    let dots = svg::elements(text, "circle")
        .iter()
        .filter(|e| e.attr("fill") == LOSS_BLUE)
        .count();
    assert_eq!(dots, n);
    let label = |l: &str| {
        let found: Vec<svg::Element> = svg::elements(text, "text")
            .into_iter()
            .filter(|e| e.text == l)
            .collect();
        assert_eq!(found.len(), 1, "{l}");
        found[0].num("x")
    };
    assert_eq!(label("θ0 (random)"), pts[0].0 + 8.0);
    assert_eq!(label("θ1 (pretrained)"), pts[n - 1].0 - 8.0);
}

/// The heatmap of a grid of `n` × `n` points: one cell per point, bottom row (lowest β) first,
/// coloured by its loss; red dots at θ0 (α = 0, β = 0) and θ1 (α = 1, β = 0).
fn check_heatmap(text: &str, rows: &[Row], n: usize) {
    let mut cells: Vec<svg::Element> = svg::elements(text, "rect")
        .into_iter()
        .filter(|e| e.attr("fill") != "#FFFFFF" && e.attr("fill") != "none")
        .filter(|e| e.num("x") + e.num("width") <= 950.0) // left of the colour bar
        .collect();
    assert_eq!(cells.len(), n * n);
    cells.sort_by(|a, b| {
        b.num("y")
            .total_cmp(&a.num("y"))
            .then(a.num("x").total_cmp(&b.num("x")))
    });
    let z: Vec<Vec<f64>> = (0..n)
        .map(|j| {
            (0..n)
                .map(|i| {
                    let r = rows
                        .iter()
                        .find(|r| r.alpha_index == i && r.beta_index == j);
                    r.unwrap().loss
                })
                .collect()
        })
        .collect();
    let (lo, hi) = z_range(&z);
    for (k, cell) in cells.iter().enumerate() {
        let c = color(z[k / n][k % n], lo, hi);
        let want = format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
        assert_eq!(cell.attr("fill"), want, "cell {k}");
    }
    let centre = |e: &svg::Element| {
        (
            e.num("x") + e.num("width") / 2.0,
            e.num("y") + e.num("height") / 2.0,
        )
    };
    let dots: Vec<(f64, f64)> = svg::elements(text, "circle")
        .iter()
        .filter(|e| e.attr("fill") == "#FF0000")
        .map(|e| (e.num("cx"), e.num("cy")))
        .collect();
    // β = 0 is the middle row; α = 0 its first cell, α = 1 its last.
    let middle = n / 2;
    for (want, got) in [
        centre(&cells[middle * n]),
        centre(&cells[middle * n + n - 1]),
    ]
    .iter()
    .zip(&dots)
    {
        assert!(
            (want.0 - got.0).abs() <= 1.0 && (want.1 - got.1).abs() <= 1.0,
            "{want:?} vs {got:?}"
        );
    }
    assert_eq!(dots.len(), 2);
}

#[test]
fn shards_merged_equal_the_whole_grid_and_draw_the_figures() {
    let whole = common::temp_dir("landscape-whole");
    let shards = common::temp_dir("landscape-shards");
    let grid = ["--dims", "2", "--alpha", "0:1:3", "--beta", "-1:1:3"];
    let mut no_plot = grid.to_vec();
    no_plot.push("--no-plot");
    run_ok(&mut landscape(whole.path(), 16, &grid));
    for shard in ["1/2", "2/2"] {
        let mut args = no_plot.clone();
        args.extend(["--shard", shard, "--jobs", "2"]);
        run_ok(&mut landscape(shards.path(), 16, &args));
    }
    let first = rows(&shards.path().join("landscape.shard-1-of-2.parquet"));
    assert_eq!(
        first.iter().map(|r| r.point).collect::<Vec<_>>(),
        vec![0, 2, 4, 6, 8]
    );

    // One shard alone is not the grid.
    let err = run_err(
        sift_lab()
            .args(["merge", "--out"])
            .arg(shards.path())
            .arg(shards.path().join("landscape.shard-1-of-2.parquet")),
    );
    assert!(err.contains("misses 4 of 9 points"), "{err}");

    let stdout = run_ok(sift_lab().args(["merge", "--out"]).arg(shards.path()));
    assert!(stdout.contains("9 of 9 points from 2 files"), "{stdout}");
    let merged = rows(&shards.path().join("landscape.parquet"));
    // The summary of the loss around θ0 and θ1 goes next to the merged file.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shards.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["neighbourhoods"].as_array().unwrap().len(), 2);
    assert_eq!(summary["points"], 9);
    assert_eq!(merged.len(), 9);
    assert_eq!(
        values(&merged),
        values(&rows(&whole.path().join("landscape.parquet")))
    );

    // Figures: PNG and SVG of the 1-D line (β = 0), the heatmap and the surface, drawn from the
    // same rows: the merged grid's files are the whole grid's, byte for byte.
    let whole_rows = rows(&whole.path().join("landscape.parquet"));
    for (stem, size) in [
        ("landscape_1d", (1100, 680)),
        ("landscape_2d_heatmap", (1100, 760)),
        ("landscape_2d_surface", (1100, 820)),
    ] {
        let read =
            |dir: &Path, ext: &str| std::fs::read(dir.join(format!("{stem}.{ext}"))).unwrap();
        assert_eq!(png_size(&read(whole.path(), "png")), size, "{stem}.png");
        for ext in ["png", "svg"] {
            assert!(
                read(whole.path(), ext) == read(shards.path(), ext),
                "{stem}.{ext} differs between the whole and the merged grid"
            );
        }
    }
    let svg_of =
        |dir: &Path, stem: &str| std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
    check_line_figure(&svg_of(whole.path(), "landscape_1d"), 3);
    check_heatmap(
        &svg_of(whole.path(), "landscape_2d_heatmap"),
        &whole_rows,
        3,
    );
    // The surface: (3 − 1) × (3 − 1) coloured quads, θ0 and θ1 labelled.
    let surface = svg_of(whole.path(), "landscape_2d_surface");
    let quads = svg::elements(&surface, "polygon")
        .into_iter()
        .filter(|e| e.attr("opacity") == "1")
        .count();
    assert_eq!(quads, 4);
    for label in ["θ0 (random)", "θ1 (pretrained)"] {
        assert!(
            svg::elements(&surface, "text")
                .iter()
                .any(|e| e.text == label),
            "{label}"
        );
    }

    // --plot-only redraws from the Parquet file into --figures-dir: the same figures.
    let figures = whole.path().join("figs");
    run_ok(
        sift_lab()
            .args(["landscape", "--plot-only", "--out"])
            .arg(whole.path())
            .arg("--figures-dir")
            .arg(&figures),
    );
    for stem in [
        "landscape_1d",
        "landscape_2d_heatmap",
        "landscape_2d_surface",
    ] {
        assert_eq!(svg_of(&figures, stem), svg_of(whole.path(), stem), "{stem}");
    }
    assert!(svg_of(&figures, "landscape_1d").contains("RTE"));
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let dir = common::temp_dir("landscape-bad");
    let out = dir.path().join("out");
    let err = run_err(&mut landscape(
        &out,
        8,
        &["--dims", "1", "--alpha", "1.5:-0.5:41"],
    ));
    assert!(err.contains("reversed"), "{err}");
    let err = run_err(&mut landscape(
        &out,
        8,
        &["--dims", "1", "--alpha", "0:1:0"],
    ));
    assert!(err.contains("empty"), "{err}");
    let err = run_err(&mut landscape(&out, 8, &["--dims", "2", "--beta", "1:1:5"]));
    assert!(err.contains("--beta") && err.contains("empty"), "{err}");
    let err = run_err(&mut landscape(&out, 8, &["--dims", "1", "--shard", "3/2"]));
    assert!(
        err.contains("3/2") && err.contains("between 1 and N = 2"),
        "{err}"
    );
    let err = run_err(&mut landscape(&out, 8, &["--dims", "3"]));
    assert!(err.contains("--dims 3"), "{err}");
    let err = run_err(&mut landscape(
        &out,
        8,
        &["--dims", "1", "--beta", "-1:1:3"],
    ));
    assert!(err.contains("--beta is for --dims 2"), "{err}");
    let err = run_err(&mut landscape(
        &out,
        8,
        &["--dims", "2", "--alpha", "-1:1:101", "--beta", "-1:1:101"],
    ));
    assert!(
        err.contains("10201 points") && err.contains("--yes") && err.contains("--max-points"),
        "{err}"
    );
    let err = run_err(&mut landscape(
        &out,
        8,
        &[
            "--dims",
            "1",
            "--alpha",
            "0:1:3",
            "--tensors",
            "encoder.layer.*.attn.*",
        ],
    ));
    // The error lists the tensors it can select, layers folded as {L} (select::select_tensors).
    assert!(
        err.contains("encoder.layer.*.attn.*")
            && err.contains("encoder.layer.{L}.attention.self.query.weight")
            && err.contains("embeddings.word_embeddings.weight"),
        "{err}"
    );
    let err = run_err(&mut landscape(
        &out,
        8,
        &["--dims", "1", "--directions", "checkpoints"],
    ));
    assert!(err.contains("--from-checkpoint"), "{err}");
    assert!(!out.join("landscape.parquet").exists());
    // The limit is configurable.
    let err = run_err(
        sift_lab()
            .args([
                "landscape",
                "--task",
                "rte",
                "--dims",
                "1",
                "--alpha",
                "0:1:5",
            ])
            .args(["--max-points", "4", "--out"])
            .arg(&out)
            .arg("--data-dir")
            .arg(common::glue_dir()),
    );
    assert!(
        err.contains("5 points") && err.contains("limit of 4"),
        "{err}"
    );
}

/// `--directions checkpoints` between θ1 saved as a checkpoint and itself is flat; between the
/// pretrained model and the same weights it reproduces θ1 at both ends.
#[test]
fn checkpoint_directions_interpolate_between_two_checkpoints() {
    let dir = common::temp_dir("landscape-ckpt");
    let pretrained = common::pretrained(2);
    let a: PathBuf = dir.path().join("a");
    let b: PathBuf = dir.path().join("b");
    let theta0 = pretrained.theta0(0).unwrap();
    sift_lab::model::weights::save_hf_checkpoint(&theta0, &pretrained.files.config, 2, &a).unwrap();
    sift_lab::model::weights::save_hf_checkpoint(
        &pretrained.weights,
        &pretrained.files.config,
        2,
        &b,
    )
    .unwrap();
    let out = dir.path().join("out");
    let mut cmd = landscape(
        &out,
        16,
        &[
            "--dims",
            "1",
            "--alpha",
            "0:1:2",
            "--directions",
            "checkpoints",
            "--no-plot",
        ],
    );
    cmd.arg("--from-checkpoint")
        .arg(&a)
        .arg("--to-checkpoint")
        .arg(&b);
    run_ok(&mut cmd);
    let ckpt = rows(&out.join("landscape.parquet"));
    // A = θ0 and B = θ1 as checkpoints: the same line as the paper directions.
    let paper = common::temp_dir("landscape-ckpt-paper");
    run_ok(&mut landscape(
        paper.path(),
        16,
        &["--dims", "1", "--alpha", "0:1:2", "--no-plot"],
    ));
    let paper = rows(&paper.path().join("landscape.parquet"));
    assert_eq!((ckpt.len(), paper.len()), (2, 2));
    for (c, p) in values(&ckpt).iter().zip(values(&paper)) {
        assert!((c.loss - p.loss).abs() < 1e-6, "{c:?} vs {p:?}");
    }
}
