//! Training trajectories on the landscape (`train --trajectory-every`, `landscape --trajectory`)
//! with the real default model and real GLUE data, on small subsets.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{glue_dir, run_ok, sift_lab, temp_dir};
use sift_lab::landscape::{self, Directions, LandscapeConfig, Range};
use sift_lab::output::{self, column};

fn train(out: &Path, method: &str, every: &str) {
    run_ok(
        sift_lab()
            .args([
                "--threads",
                "2",
                "train",
                "--task",
                "mrpc",
                "--method",
                method,
            ])
            .args(["--epochs", "1", "--batch-size", "8", "--max-len", "32"])
            .args(["--lr", "5e-3", "--train-limit", "64", "--eval-limit", "16"])
            .args(["--trajectory-every", every, "--data-dir"])
            .arg(glue_dir())
            .arg("--out")
            .arg(out),
    );
}

fn landscape(out: &Path, directions: &str, alpha: &str, beta: &str, runs: &[&Path]) -> String {
    let mut cmd = sift_lab();
    cmd.args([
        "--threads",
        "2",
        "landscape",
        "--task",
        "mrpc",
        "--dims",
        "2",
    ])
    .args(["--directions", directions, "--alpha", alpha, "--beta", beta])
    .args(["--eval-examples", "16", "--max-len", "32", "--data-dir"])
    .arg(glue_dir())
    .arg("--out")
    .arg(out);
    for run in runs {
        cmd.arg("--trajectory").arg(run);
    }
    run_ok(&mut cmd)
}

/// The placed snapshots: (method, step, α, β, off-plane distance, loss).
fn placed(dir: &Path) -> Vec<(String, u64, f64, f64, f64, f64)> {
    let df = output::read_parquet(&dir.join("trajectory.parquet")).unwrap();
    let methods = column::strings(&df, "method").unwrap();
    let steps = column::u64s(&df, "step").unwrap();
    let alpha = column::f64s(&df, "alpha").unwrap();
    let beta = column::f64s(&df, "beta").unwrap();
    let off = column::f64s(&df, "off_plane").unwrap();
    let loss = column::f64s(&df, "loss").unwrap();
    (0..steps.len())
        .map(|i| {
            (
                methods[i].clone(),
                steps[i],
                alpha[i],
                beta[i],
                off[i],
                loss[i],
            )
        })
        .collect()
}

#[test]
fn runs_on_the_papers_plane_a_still_body_is_one_point_and_sift_leaves_the_plane_by_its_delta() {
    let tmp = temp_dir("trajectory-paper");
    let (head, sift) = (tmp.path().join("head"), tmp.path().join("sift"));
    train(&head, "head", "2");
    train(&sift, "sift", "2");
    // 64 examples / batch 8 = 8 steps: snapshots at steps 0, 2, 4, 6, 8.
    let table = sift_lab::trajectory::read_table(&sift).unwrap();
    assert_eq!(
        table.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![0, 2, 4, 6, 8]
    );
    assert_eq!(table[0].distance, 0.0);
    assert!(table[4].distance > 0.0);

    let out = tmp.path().join("plane");
    landscape(&out, "paper", "0:1:2", "-0.5:0.5:2", &[&head, &sift]);
    let rows = placed(&out);
    assert_eq!(rows.len(), 10);
    // Head-only training moves no encoder weight: every snapshot projects onto θ1 itself,
    // (1, 0). (MiniLM's pretrained pooler, trained with the head, moves off the plane, by no
    // more than the run's whole ‖θ_t − θ_start‖.)
    let head_table = sift_lab::trajectory::read_table(&head).unwrap();
    for ((method, step, a, b, off, _), snapshot) in
        rows.iter().filter(|r| r.0 == "head").zip(&head_table)
    {
        assert!(
            (a - 1.0).abs() < 1e-5 && b.abs() < 1e-5,
            "{method} step {step}: ({a}, {b})"
        );
        assert!(*off <= snapshot.distance * (1.0 + 1e-4) + 1e-4, "{off}");
    }
    // SIFT's Δ is tiny beside δ1 = θ1 − θ0: it stays at α ≈ 1, and its distance from the plane
    // is at most ‖Δ‖ (the projection only removes the in-plane part).
    for ((_, step, a, b, off, _), snapshot) in rows.iter().filter(|r| r.0 == "sift").zip(&table) {
        assert!(
            (a - 1.0).abs() < 1e-2 && b.abs() < 1e-2,
            "step {step}: ({a}, {b})"
        );
        assert!(
            *off <= snapshot.distance * (1.0 + 1e-4) + 1e-4,
            "step {step}: off-plane {off} > ‖Δ‖ {}",
            snapshot.distance
        );
    }
    let last = rows.iter().rfind(|r| r.0 == "sift").unwrap();
    assert!(last.4 > 0.5 * table[4].distance, "{last:?}");
    assert!(out.join("trajectory_2d.png").is_file() && out.join("trajectory_2d.svg").is_file());

    // Placing again into the same folder is refused, naming the file.
    let err = common::run_err(
        sift_lab()
            .args([
                "landscape",
                "--task",
                "mrpc",
                "--dims",
                "2",
                "--alpha",
                "0:1:2",
            ])
            .args([
                "--beta",
                "-0.5:0.5:2",
                "--eval-examples",
                "16",
                "--max-len",
                "32",
            ])
            .arg("--data-dir")
            .arg(glue_dir())
            .arg("--out")
            .arg(&out)
            .args(["--resume", "--trajectory"])
            .arg(&sift),
    );
    assert!(err.contains("trajectory.parquet already exists"), "{err}");

    // A checkpoints plane is not built around θ1: refused before any work.
    let err = common::run_err(
        sift_lab()
            .args(["landscape", "--task", "mrpc", "--dims", "2", "--directions"])
            .args(["checkpoints", "--from-checkpoint", "/nonexistent/a"])
            .args(["--to-checkpoint", "/nonexistent/b", "--data-dir"])
            .arg(glue_dir())
            .arg("--out")
            .arg(tmp.path().join("checkpoints"))
            .arg("--trajectory")
            .arg(&sift),
    );
    assert!(
        err.contains("--trajectory") && err.contains("not checkpoints"),
        "{err}"
    );
}

#[test]
fn a_point_theta1_plus_a_delta1_plus_b_delta2_projects_to_a_b() {
    // Built independently of the surface: θ0 from the model's seeded init, δ2 = d ⊙ δ1 with d
    // drawn as the landscape draws it, the increment (a − 1)·δ1 + b·δ2 added to θ1.
    let mut config = LandscapeConfig::new(sift_lab::data::Task::Mrpc, &glue_dir(), 2);
    config.set_grid(
        Directions::Paper,
        Some(Range::new(0.0, 1.0, 2).unwrap()),
        Some(Range::new(-1.0, 1.0, 2).unwrap()),
    );
    config.tensors = Some("encoder.layer.5.attention.self.*.weight".into());
    config.eval_examples = 4;
    let prepared = landscape::prepare(&config).unwrap();
    let theta1 = &prepared.theta1;
    let theta0 = theta1.theta0(config.seed).unwrap();
    let (a, b) = (0.8, -0.35);
    let mut increments = BTreeMap::new();
    for name in prepared.surface.moving_names() {
        let delta1 = (&theta1.weights[name] - &theta0[name]).unwrap();
        let d = landscape::gaussian(
            "d",
            name,
            delta1.dims(),
            config.seed,
            &delta1.device().clone(),
        )
        .unwrap();
        let delta2 = landscape::paper_delta2(&delta1, &d).unwrap();
        let inc = ((delta1 * (a - 1.0)).unwrap() + (delta2 * b).unwrap()).unwrap();
        increments.insert(name.to_string(), inc);
    }
    assert_eq!(increments.len(), 3);
    let (pa, pb, off) = prepared.surface.project(&increments).unwrap();
    assert!(
        (pa - a).abs() < 1e-5 && (pb - b).abs() < 1e-5,
        "({pa}, {pb})"
    );
    // On the plane up to f32 rounding of the increments (‖δ1‖ is in the hundreds).
    assert!(off < 1e-2, "{off}");
    // And θ1 itself (no increment) is (1, 0).
    let (one, zero, off) = prepared.surface.project(&BTreeMap::new()).unwrap();
    assert!((one - 1.0).abs() < 1e-9 && zero.abs() < 1e-9 && off < 1e-6);
}

#[test]
fn a_run_on_its_own_pca_plane_ends_at_the_origin_with_the_grid_loss_there() {
    let tmp = temp_dir("trajectory-pca");
    let run = tmp.path().join("sift");
    train(&run, "sift", "1");
    let out = tmp.path().join("pca");
    landscape(&out, "pca", "-1:1:3", "-1:1:3", &[&run]);
    let rows = placed(&out);
    assert_eq!(rows.len(), 9, "steps 0..=8");
    let last = rows.last().unwrap();
    assert!(last.2.abs() < 1e-6 && last.3.abs() < 1e-6, "{last:?}");
    assert!(
        last.4 < 1e-3,
        "the last snapshot is the plane's origin: {last:?}"
    );
    // The grid's (0, 0) point is the same weights: the same loss.
    let grid = landscape::read_file(&out.join("landscape.parquet")).unwrap();
    let centre = grid
        .rows
        .iter()
        .find(|r| r.alpha == 0.0 && r.beta == 0.0)
        .unwrap();
    assert!(
        (centre.loss - last.5).abs() < 1e-6,
        "{} vs {}",
        centre.loss,
        last.5
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trajectory.json")).unwrap())
            .unwrap();
    let explained: Vec<f64> = summary["explained_variance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        explained[0] >= explained[1]
            && explained[1] > 0.0
            && explained[0] + explained[1] <= 1.0 + 1e-9,
        "{explained:?}"
    );
    // The step-0 snapshot (θ1) lies |first-PC coordinate| away along d1 at least: the run moved.
    assert!(rows[0].2.abs() + rows[0].3.abs() > 0.0);
}
