//! grad-stats on the real default model and real MRPC batches (small: batch 8, max_len 64):
//! the gradients it uses are those of the full training path, the tables agree with them and
//! with each other, the during-training mode really trains, bad input is refused, and the
//! figures are redrawn from the Parquet files alone.

mod common;

use std::collections::HashMap;
use std::process::Command;

use candle_core::{Device, Var};
use sift_lab::data::{BatchOrder, Task};
use sift_lab::grad_stats::{self, GradStatsConfig, GradientSource, OverlapMode, Setup};
use sift_lab::model::{self, Mode, WeightMap};
use sift_lab::output;
use sift_lab::plot::svg;

const VALUE0: &str = "encoder.layer.0.attention.self.value.weight";

fn config(out: &std::path::Path, batches: usize) -> GradStatsConfig {
    let mut config = GradStatsConfig::new(
        &common::default_model(),
        Task::Mrpc,
        &common::glue_dir(),
        out,
    );
    config.batch_size = 8;
    config.max_len = 64;
    config.batches = batches;
    config.bins = 50;
    config.seed = 3;
    config
}

/// The reference: every tensor a Var, full backward, as tests/model.rs does.
fn full_backward_gradient(
    setup: &Setup,
    weights: &WeightMap,
    batch: &sift_lab::data::Batch,
    name: &str,
) -> Vec<f32> {
    let vars: HashMap<String, Var> = weights
        .iter()
        .map(|(n, t)| (n.clone(), Var::from_tensor(t).unwrap()))
        .collect();
    let map: WeightMap = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let classifier = setup.pretrained.build(&map).unwrap();
    let logits = classifier
        .forward(
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
            Mode::Training,
        )
        .unwrap();
    let grads = model::mean_loss(&logits, &batch.labels)
        .unwrap()
        .backward()
        .unwrap();
    grads
        .get(vars[name].as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max)
        / scale
}

fn column_f64(df: &polars::prelude::DataFrame, name: &str) -> Vec<f64> {
    df.column(name)
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect()
}

fn column_str(df: &polars::prelude::DataFrame, name: &str) -> Vec<String> {
    df.column(name)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap().to_string())
        .collect()
}

/// Row indices where every (column, value) pair matches.
fn rows(df: &polars::prelude::DataFrame, filters: &[(&str, &str)]) -> Vec<usize> {
    let columns: Vec<Vec<String>> = filters.iter().map(|(c, _)| column_str(df, c)).collect();
    (0..df.height())
        .filter(|&i| {
            filters
                .iter()
                .zip(&columns)
                .all(|((_, v), col)| col[i] == *v)
        })
        .collect()
}

/// The gradient grad-stats takes for a batch equals a full backward over every tensor (same
/// tensor, same batch), for θ1 and θ0; and the first batch is the first of the seeded shuffle.
#[test]
fn gradients_used_equal_those_of_the_full_training_path() {
    let dir = common::temp_dir("grad-stats-same");
    let mut config = config(dir.path(), 2);
    config.tensors = Some(format!(
        "{VALUE0},encoder.layer.5.attention.output.dense.weight"
    ));
    let setup = Setup::load(&config).unwrap();
    assert_eq!(setup.tensors[0], VALUE0);
    let device = Device::Cpu;
    let batch = grad_stats::batch_stream(&setup.dataset, 8, config.seed, &device)
        .next()
        .unwrap()
        .unwrap();
    let expected_batch = setup
        .dataset
        .batches(
            8,
            BatchOrder::Shuffled {
                seed: config.seed,
                epoch: 0,
            },
            &device,
        )
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(batch.example_indices, expected_batch.example_indices);

    let weights = setup.weights(config.seed).unwrap();
    let mut used = Vec::new();
    for (m, w) in weights.iter().enumerate() {
        let mut source = GradientSource::frozen(&setup.pretrained, w, &setup.tensors).unwrap();
        let g = source.step(&batch).unwrap().grads.remove(0);
        let reference = full_backward_gradient(&setup, w, &batch, VALUE0);
        let diff = max_rel_diff(&g, &reference);
        assert!(diff < 1e-5, "model {m}: relative difference {diff}");
        used.push(reference);
    }

    // The tables of a run on the same config describe exactly these first-batch gradients.
    let tables = grad_stats::compute(&config, false).unwrap();
    for (m, model_name) in grad_stats::MODELS.iter().enumerate() {
        let g = &used[m];
        let stats = &tables.stats;
        let r = rows(
            stats,
            &[
                ("model", model_name),
                ("tensor", VALUE0),
                ("scope", "batch1"),
            ],
        );
        assert_eq!(r.len(), 1);
        let max_abs = g.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
        let norm = g
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt();
        let got_max = column_f64(stats, "max_abs")[r[0]];
        let got_norm = column_f64(stats, "l2_norm")[r[0]];
        assert!(
            (got_max - max_abs).abs() <= 1e-5 * max_abs,
            "{model_name} max |g|"
        );
        assert!((got_norm - norm).abs() <= 1e-5 * norm, "{model_name} ‖g‖");

        // The top-x curve of the table is the closed-form curve of the reference gradient.
        let topx = &tables.topx;
        let r = rows(topx, &[("model", model_name), ("tensor", VALUE0)]);
        let x: Vec<f64> = r
            .iter()
            .map(|&i| column_f64(topx, "x_percent")[i])
            .collect();
        let ratio: Vec<f64> = r
            .iter()
            .map(|&i| column_f64(topx, "norm_ratio")[i])
            .collect();
        assert!(x.len() > 10 && x.contains(&1.0), "{x:?}");
        for (j, &a) in ratio.iter().enumerate() {
            let b = topx_by_sorting(g, x[j]);
            assert!(
                (a - b).abs() < 1e-5,
                "{model_name} x = {}: {a} vs {b}",
                x[j]
            );
        }
    }
}

/// SPEC's P(x) = ‖g_top⌈x·n⌉‖₂ / ‖g‖₂ by sorting the squares, independently of `math`.
fn topx_by_sorting(g: &[f32], x_percent: f64) -> f64 {
    let mut squares: Vec<f64> = g.iter().map(|&v| (v as f64) * (v as f64)).collect();
    squares.sort_by(|a, b| b.total_cmp(a));
    // ⌈x·n⌉ with x·n rounded to 9 digits first, so 1 % of 147456 is 1475 (1474.56 up).
    let exact = (x_percent / 100.0 * g.len() as f64 * 1e9).round() / 1e9;
    let k = (exact.ceil() as usize).clamp(1, g.len());
    (squares[..k].iter().sum::<f64>() / squares.iter().sum::<f64>()).sqrt()
}

/// Histogram counts add up to the entries of the tensor, on both ranges, for every unit; the
/// overlap rows are consistent (batch 1: r_first = r_own, overlap 1; r_first ≤ r_own; r_own is
/// the top-1 % point of the curve on batch 1); and the figures redraw from the written Parquet.
#[test]
fn tables_are_consistent_and_figures_redraw_from_parquet() {
    let dir = common::temp_dir("grad-stats-tables");
    let config = config(dir.path(), 3);
    let mut tables = grad_stats::compute(&config, false).unwrap();
    let summary = tables.summary.clone();
    assert_eq!(summary.batches_done, 3);
    assert_eq!(
        summary.tensors.len(),
        6 * 4,
        "default: q, k, v, o weights of 6 layers"
    );
    assert_eq!(
        summary.figure_tensor,
        "encoder.layer.3.attention.self.value.weight"
    );
    let numel_per_tensor = 384 * 384;

    // Histograms: 2 models × 2 ranges × (24 tensors + all) × bins rows.
    let hist = &tables.hist;
    assert_eq!(hist.height(), 2 * 2 * 25 * config.bins);
    let counts: Vec<u64> = hist
        .column("count")
        .unwrap()
        .u64()
        .unwrap()
        .iter()
        .map(|v| v.unwrap())
        .collect();
    for model in grad_stats::MODELS {
        for range in ["shared", "own"] {
            for (tensor, numel) in [
                (summary.tensors[7].as_str(), numel_per_tensor),
                (grad_stats::ALL, summary.numel),
            ] {
                let r = rows(
                    hist,
                    &[("model", model), ("range", range), ("tensor", tensor)],
                );
                assert_eq!(r.len(), config.bins);
                let total: u64 = r.iter().map(|&i| counts[i]).sum();
                assert_eq!(total as usize, numel, "{model} {range} {tensor}");
            }
        }
    }
    // Shared bins are the same for both models and span ±max|g| over both.
    let lo = column_f64(hist, "lo");
    let shared: Vec<Vec<usize>> = grad_stats::MODELS
        .iter()
        .map(|m| {
            rows(
                hist,
                &[
                    ("model", m),
                    ("range", "shared"),
                    ("tensor", grad_stats::ALL),
                ],
            )
        })
        .collect();
    assert_eq!(lo[shared[0][0]], lo[shared[1][0]]);

    let overlap = &tables.overlap;
    assert_eq!(overlap.height(), 2 * (24 + 2) * 3);
    let (r_first, r_own, ov) = (
        column_f64(overlap, "r_first"),
        column_f64(overlap, "r_own"),
        column_f64(overlap, "overlap"),
    );
    let batch: Vec<u32> = overlap
        .column("batch")
        .unwrap()
        .u32()
        .unwrap()
        .iter()
        .map(|v| v.unwrap())
        .collect();
    for i in 0..overlap.height() {
        assert!(
            r_first[i] <= r_own[i] + 1e-12,
            "row {i}: the own mask is the best k-set"
        );
        assert!((0.0..=1.0).contains(&ov[i]));
        if batch[i] == 1 {
            assert_eq!(r_first[i], r_own[i]);
            assert_eq!(ov[i], 1.0);
        }
    }
    // r_own at batch 1 = the curve's value at 1 % on batch 1, for the global unit (up to the one
    // component between the mask's ⌊x·n⌋ and the curve's ⌈x·n⌉).
    let topx = &tables.topx;
    for model in grad_stats::MODELS {
        let t = rows(topx, &[("model", model), ("tensor", grad_stats::ALL)]);
        let at1 = t
            .iter()
            .find(|&&i| column_f64(topx, "x_percent")[i] == 1.0)
            .unwrap();
        let o = rows(overlap, &[("model", model), ("tensor", grad_stats::ALL)]);
        let first = o.iter().find(|&&i| batch[i] == 1).unwrap();
        let curve = column_f64(topx, "norm_ratio")[*at1];
        assert!(
            curve >= r_own[*first] && curve - r_own[*first] < 1e-3,
            "{curve} vs {}",
            r_own[*first]
        );
    }

    // Written and read back; the figures come from the files alone.
    let overlap_rows = overlap.height();
    let written = grad_stats::write_tables(&mut tables, dir.path()).unwrap();
    assert_eq!(written.len(), 5);
    let back = output::read_parquet(&dir.path().join("overlap.parquet")).unwrap();
    assert_eq!(back.height(), overlap_rows);
    let meta = output::read_metadata(&dir.path().join("topx.parquet")).unwrap();
    let config_json = &meta.iter().find(|(k, _)| k == "config").unwrap().1;
    let read: GradStatsConfig = serde_json::from_str(config_json).unwrap();
    assert_eq!(read.batches, 3);
    let figures = dir.path().join("figs");
    let paths = grad_stats::draw_figures(dir.path(), &figures).unwrap();
    for name in ["fig3_gradients", "fig4_mask_overlap"] {
        for ext in ["png", "svg"] {
            assert!(paths.contains(&figures.join(format!("{name}.{ext}"))));
        }
    }
    check_fig4_draws_the_overlap_table(&figures.join("fig4_mask_overlap.svg"), &back, 3);
}

/// What Fig. 4 draws, read from its SVG: four panels (θ1, θ0 × the figure tensor, all
/// per-tensor), each with a red r_first line of one point per batch, at equal x steps, whose
/// heights are the table's r_first values on a linear axis; batch 1 starts where r_own does.
fn check_fig4_draws_the_overlap_table(
    svg_path: &std::path::Path,
    overlap: &polars::prelude::DataFrame,
    batches: usize,
) {
    let svg = std::fs::read_to_string(svg_path).unwrap();
    let texts: Vec<String> = svg::elements(&svg, "text")
        .into_iter()
        .map(|t| t.text)
        .collect();
    for title in [
        "θ1 pretrained · layer 3",
        "θ0 from scratch · all 24 chosen tensors",
    ] {
        assert!(
            texts.iter().any(|t| t.contains(title)),
            "no panel '{title}' in {texts:?}"
        );
    }
    let red: Vec<Vec<(f64, f64)>> = svg::elements(&svg, "polyline")
        .iter()
        .filter(|line| line.attr("stroke").eq_ignore_ascii_case("#C81E1E"))
        .map(|line| line.points())
        .collect();
    // Each panel: its r_first line, then the two-point stroke of its legend entry.
    assert_eq!(red.len(), 8, "{red:?}");
    assert!(red
        .iter()
        .skip(1)
        .step_by(2)
        .all(|legend| legend.len() == 2));
    let red: Vec<_> = red.into_iter().step_by(2).collect();
    // Panel order: figure tensor (θ1, θ0), then all/per-tensor (θ1, θ0).
    let units = [
        ("pretrained", "encoder.layer.3.attention.self.value.weight"),
        ("scratch", "encoder.layer.3.attention.self.value.weight"),
        ("pretrained", grad_stats::ALL_PER_TENSOR),
        ("scratch", grad_stats::ALL_PER_TENSOR),
    ];
    let r_first = column_f64(overlap, "r_first");
    for (points, (model, tensor)) in red.iter().zip(units) {
        let r = rows(overlap, &[("model", model), ("tensor", tensor)]);
        let values: Vec<f64> = r.iter().map(|&i| r_first[i]).collect();
        assert_eq!(
            (points.len(), values.len()),
            (batches, batches),
            "{model} {tensor}"
        );
        let dx = points[1].0 - points[0].0;
        assert!(dx > 10.0 && (points[2].0 - points[1].0 - dx).abs() <= 1.0);
        // Pixel y grows downwards: y = top + (1.02 - v)·scale. The scale comes from the point
        // farthest in value from batch 1; every point must then sit within a pixel and a half
        // of the line (plotters rounds to whole pixels).
        let far = (1..batches)
            .max_by(|&a, &b| {
                (values[a] - values[0])
                    .abs()
                    .total_cmp(&(values[b] - values[0]).abs())
            })
            .unwrap();
        let scale = (points[0].1 - points[far].1) / (values[far] - values[0]);
        assert!(
            scale > 300.0 && scale < 500.0,
            "{model} {tensor}: scale {scale}"
        );
        for (p, v) in points.iter().zip(&values) {
            let predicted = points[0].1 - (v - values[0]) * scale;
            assert!(
                (predicted - p.1).abs() <= 1.5,
                "{model} {tensor}: heights {points:?} do not follow {values:?}"
            );
        }
    }
}

/// during-training: the first gradient is taken before any update (so it equals the frozen
/// one), later ones are taken at updated weights (so they differ from the frozen ones).
#[test]
fn during_training_takes_each_gradient_before_its_update() {
    let dir = common::temp_dir("grad-stats-train");
    let mut config = config(dir.path(), 3);
    config.tensors = Some(VALUE0.into());
    config.overlap_mode = OverlapMode::DuringTraining;
    config.lr = 1e-4;
    let setup = Setup::load(&config).unwrap();
    assert_eq!(
        setup.trainable.len(),
        6 * 16 + 5 + 4,
        "full fine-tuning by default"
    );
    let device = Device::Cpu;
    let batches: Vec<_> = grad_stats::batch_stream(&setup.dataset, 8, config.seed, &device)
        .take(3)
        .map(Result::unwrap)
        .collect();
    let weights = setup.weights(config.seed).unwrap();
    let value = |w: &WeightMap| w[VALUE0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let before = [value(&weights[0]), value(&weights[1])];
    for w in &weights {
        let mut training = setup.source(&config, w).unwrap();
        let mut frozen = GradientSource::frozen(&setup.pretrained, w, &setup.tensors).unwrap();
        let mut frozen_losses = vec![];
        let mut training_losses = vec![];
        for (t, batch) in batches.iter().enumerate() {
            let a = training.step(batch).unwrap();
            let b = frozen.step(batch).unwrap();
            frozen_losses.push(b.loss);
            training_losses.push(a.loss);
            let diff = max_rel_diff(&a.grads[0], &b.grads[0]);
            if t == 0 {
                assert!(diff < 1e-6, "step 1 must see the initial weights ({diff})");
            } else {
                assert!(
                    diff > 1e-4,
                    "step {} must see updated weights ({diff})",
                    t + 1
                );
            }
        }
        assert_ne!(frozen_losses[2], training_losses[2]);
    }
    // The caller's weights (θ1 is the loaded checkpoint itself) are not touched by the run.
    assert_eq!(before, [value(&weights[0]), value(&weights[1])]);
}

#[test]
fn bad_input_is_refused_with_a_helpful_message() {
    let dir = common::temp_dir("grad-stats-bad");
    let mut c = config(dir.path(), 1);
    let err = format!("{:#}", grad_stats::compute(&c, false).err().unwrap());
    assert!(err.contains("at least 2 batches"), "{err}");

    c.batches = 2;
    c.bins = 1;
    let err = format!("{:#}", grad_stats::compute(&c, false).err().unwrap());
    assert!(err.contains("at least 2 bins"), "{err}");

    c.bins = 10;
    c.tensors = Some("encoder.layer.*.attention.self.value.weight,nothing.like.this".into());
    let err = format!("{:#}", grad_stats::compute(&c, false).err().unwrap());
    assert!(
        err.contains("'nothing.like.this' matches no tensor"),
        "{err}"
    );
    assert!(
        err.contains("encoder.layer.{L}.attention.self.value.weight") && err.contains("L = 0..5"),
        "the available names are listed: {err}"
    );

    c.tensors = None;
    c.figure_tensor = Some("encoder.layer.0.output.dense.weight".into());
    let err = format!("{:#}", grad_stats::compute(&c, false).err().unwrap());
    assert!(err.contains("not among the chosen tensors"), "{err}");
}

/// The command line end to end: a run writes the tables and both figures; --plot-only redraws
/// them elsewhere from the Parquet files; a bad pattern fails with the list of names.
#[test]
fn cli_runs_and_redraws_from_parquet() {
    let dir = common::temp_dir("grad-stats-cli");
    let out = dir.path().join("out");
    let bin = env!("CARGO_BIN_EXE_sift-lab");
    let glue = common::glue_dir();
    let run = Command::new(bin)
        .args([
            "grad-stats",
            "--task",
            "mrpc",
            "--batches",
            "2",
            "--batch-size",
            "4",
        ])
        .args([
            "--max-len",
            "32",
            "--bins",
            "20",
            "--tensors",
            "encoder.layer.1.attention.*.weight",
        ])
        .arg("--data-dir")
        .arg(&glue)
        .arg("--out")
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The printed headline for θ1 "all" is the mean r_first over batches 2..N of overlap.parquet.
    let stdout = String::from_utf8_lossy(&run.stdout);
    let overlap = output::read_parquet(&out.join("overlap.parquet")).unwrap();
    let r = rows(
        &overlap,
        &[("model", "pretrained"), ("tensor", grad_stats::ALL)],
    );
    let batch = output::column::u32s(&overlap, "batch").unwrap();
    let later: Vec<f64> = r
        .iter()
        .filter(|&&i| batch[i] > 1)
        .map(|&i| column_f64(&overlap, "r_first")[i])
        .collect();
    assert_eq!(later.len(), 1);
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["pretrained", "all"]))
        .unwrap_or_else(|| panic!("no 'pretrained all' row in {stdout}"));
    let printed: f64 = line.split_whitespace().nth(5).unwrap().parse().unwrap();
    assert!((printed - later[0]).abs() < 6e-5, "{line} vs {}", later[0]);
    for file in [
        "hist.parquet",
        "topx.parquet",
        "overlap.parquet",
        "stats.parquet",
        "summary.json",
        "fig3_gradients.png",
        "fig4_mask_overlap.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    // The attention.*.weight glob also catches attention.output.LayerNorm.weight: 5 tensors.
    assert_eq!(summary["tensors"].as_array().unwrap().len(), 5);
    assert!(summary["peak_rss_mib"].as_f64().unwrap() > 0.0);

    let figures = dir.path().join("figures");
    let redraw = Command::new(bin)
        .args(["grad-stats", "--plot-only"])
        .arg("--out")
        .arg(&out)
        .arg("--figures-dir")
        .arg(&figures)
        .output()
        .unwrap();
    assert!(
        redraw.status.success(),
        "{}",
        String::from_utf8_lossy(&redraw.stderr)
    );
    // Redrawn from the Parquet files alone, the figures are the run's own, byte for byte.
    for file in [
        "fig3_gradients.svg",
        "fig4_mask_overlap.svg",
        "fig4_mask_overlap.png",
    ] {
        let (drawn, redrawn) = (
            std::fs::read(out.join(file)).unwrap(),
            std::fs::read(figures.join(file)).unwrap(),
        );
        assert!(
            !drawn.is_empty() && drawn == redrawn,
            "{file} differs when redrawn"
        );
    }

    let bad = Command::new(bin)
        .args(["grad-stats", "--task", "mrpc", "--tensors", "decoder.*"])
        .arg("--data-dir")
        .arg(&glue)
        .arg("--out")
        .arg(dir.path().join("bad"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("matches no tensor")
            && stderr.contains("embeddings.word_embeddings.weight"),
        "{stderr}"
    );
}
