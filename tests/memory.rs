//! `sift-lab memory`: Table 1's rows through the CLI, and a finished run's measured rows.

mod common;

use common::{run_err, run_ok, sift_lab};

fn gib(report: &serde_json::Value, item: &str) -> f64 {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["item"] == item)
        .unwrap()["gib"]
        .as_f64()
        .unwrap()
}

/// The paper's columns for LLaMA-7B, bf16, fp32 AdamW (12.55 / 12.55 / 50.21; SIFT 5 %:
/// 0.626 printed, 0.05 × 12.551 = 0.6276 computed, / 2.51), and the totals as the rows' sums.
#[test]
fn table1_through_the_cli() {
    let run = |method: &str, gc: bool| -> serde_json::Value {
        let mut cmd = sift_lab();
        cmd.args([
            "memory", "--config", "llama-7b", "--method", method, "--json",
        ]);
        if gc {
            cmd.arg("--checkpointing");
        }
        serde_json::from_str(&run_ok(&mut cmd)).unwrap()
    };
    let full = run("full", false);
    assert_eq!(full["parameters"], 6_738_415_616u64);
    assert_eq!(format!("{:.2}", gib(&full, "parameters")), "12.55");
    assert_eq!(format!("{:.2}", gib(&full, "gradients")), "12.55");
    assert_eq!(format!("{:.2}", gib(&full, "optimizer states")), "50.21");
    let sift = run("sift", true);
    assert_eq!(format!("{:.3}", gib(&sift, "gradients")), "0.628");
    assert_eq!(format!("{:.2}", gib(&sift, "optimizer states")), "2.51");
    for report in [&full, &sift] {
        let sum: f64 = ["parameters", "gradients", "optimizer states", "activations"]
            .iter()
            .map(|item| gib(report, item))
            .sum();
        assert!((sum - gib(report, "total")).abs() < 1e-9);
    }
}

#[test]
fn bad_config_names_the_presets() {
    let err = run_err(sift_lab().args(["memory", "--config", "llama-8b"]));
    assert!(
        err.contains("llama-7b") && err.contains("config.json"),
        "{err}"
    );
}

/// A real run's summary (results/train-mrpc-sift: SIFT 1 % of q,k,v,o on MiniLM): the measured
/// gradient and AdamW bytes equal the budget rule's count for the model's shapes.
#[test]
fn measured_rows_of_a_real_run() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/results/train-mrpc-sift");
    common::default_model();
    let out = run_ok(sift_lab().args(["memory", "--run", dir, "--json"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for row in &rows[..3] {
        assert_eq!(row["measured_bytes"], row["estimate_bytes"], "{row}");
    }
    // 6 layers × 4 matrices × ⌊0.01 · 384²⌋ = 35,376 plus the head's 148,610.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["trainable_params"], 24 * 1474 + 148_610);
    assert_eq!(rows[1]["estimate_bytes"], 4 * (24 * 1474 + 148_610));
}
