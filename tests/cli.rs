//! The `sift-lab` binary end to end: real model, real data, real files, and its errors.

mod common;

use common::{run_err, run_ok, sift_lab};

#[test]
fn eval_reports_json_and_writes_predictions_that_agree_with_it() {
    let dir = common::temp_dir("eval");
    let predictions = dir.path().join("preds.parquet");
    let stdout = run_ok(
        sift_lab()
            .args([
                "eval",
                "--task",
                "mrpc",
                "--split",
                "dev",
                "--limit",
                "40",
                "--batch-size",
                "16",
                "--json",
            ])
            .arg("--data-dir")
            .arg(common::glue_dir())
            .arg("--predictions")
            .arg(&predictions),
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["n_examples"], 40);
    assert_eq!(report["task"], "mrpc");

    // Recompute the metrics from the per-example rows, independently of the eval loop.
    let df = sift_lab::output::read_parquet(&predictions).unwrap();
    assert_eq!(df.height(), 40);
    let col_u32 = |name: &str| -> Vec<u32> {
        df.column(name)
            .unwrap()
            .u32()
            .unwrap()
            .into_no_null_iter()
            .collect()
    };
    let col_f32 = |name: &str| -> Vec<f32> {
        df.column(name)
            .unwrap()
            .f32()
            .unwrap()
            .into_no_null_iter()
            .collect()
    };
    let (pred, label) = (col_u32("prediction"), col_u32("label"));
    let (l0, l1, loss) = (col_f32("logit_0"), col_f32("logit_1"), col_f32("loss"));
    for i in 0..40 {
        assert_eq!(pred[i], (l1[i] > l0[i]) as u32);
        // Cross-entropy from the two logits by hand: log(1 + e^(other - own)).
        let (own, other) = if label[i] == 1 {
            (l1[i], l0[i])
        } else {
            (l0[i], l1[i])
        };
        let ce = (1.0f64 + ((other - own) as f64).exp()).ln();
        assert!(
            (ce - loss[i] as f64).abs() < 1e-5,
            "row {i}: loss {} vs {ce}",
            loss[i]
        );
    }
    let acc = pred.iter().zip(&label).filter(|(p, l)| p == l).count() as f64 / 40.0;
    assert!((report["metrics"]["accuracy"].as_f64().unwrap() - acc).abs() < 1e-12);
    let mean_loss = loss.iter().map(|&l| l as f64).sum::<f64>() / 40.0;
    assert!((report["mean_loss"].as_f64().unwrap() - mean_loss).abs() < 1e-6);
    // MRPC labels in file order: the first dev row's label (column 0) is 1.
    assert_eq!(df.column("line").unwrap().u32().unwrap().get(0), Some(2));
    let metadata = sift_lab::output::read_metadata(&predictions).unwrap();
    assert!(metadata
        .iter()
        .any(|(k, v)| k == sift_lab::output::VERSION_KEY && v == env!("CARGO_PKG_VERSION")));
    assert!(metadata.iter().any(|(k, _)| k == "eval_report"));
}

#[test]
fn unknown_task_names_the_flag_and_the_valid_tasks() {
    let err = run_err(
        sift_lab()
            .args(["eval", "--task", "rtee"])
            .arg("--data-dir")
            .arg(common::glue_dir()),
    );
    assert!(
        err.contains("invalid value 'rtee' for '--task <TASK>'") && err.contains("mrpc, qqp"),
        "{err}"
    );
}

#[test]
fn malformed_tsv_names_file_and_line() {
    let dir = common::temp_dir("bad-tsv");
    std::fs::create_dir_all(dir.path().join("RTE")).unwrap();
    std::fs::write(
        dir.path().join("RTE/dev.tsv"),
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly two\n",
    )
    .unwrap();
    let err = run_err(
        sift_lab()
            .args(["eval", "--task", "rte"])
            .arg("--data-dir")
            .arg(dir.path()),
    );
    assert!(err.contains("dev.tsv") && err.contains("line 3"), "{err}");
}

#[test]
fn missing_data_dir_says_how_to_get_glue() {
    let dir = common::temp_dir("no-glue");
    let err = run_err(
        sift_lab()
            .args(["eval", "--task", "sst2"])
            .arg("--data-dir")
            .arg(dir.path()),
    );
    assert!(err.contains("SST-2") && err.contains("GLUE"), "{err}");
}

#[test]
fn a_model_that_is_not_installed_says_how_to_install_it() {
    let hub = common::temp_dir("empty-hub");
    let err = run_err(
        sift_lab()
            .env("HF_HUB_CACHE", hub.path())
            .args(["eval", "--task", "rte"])
            .arg("--data-dir")
            .arg(common::glue_dir()),
    );
    assert!(err.contains("scripts/setup-model.sh"), "{err}");
    let err = run_err(
        sift_lab()
            .args(["eval", "--task", "rte", "--model", "nobody/no-such-model"])
            .arg("--data-dir")
            .arg(common::glue_dir()),
    );
    assert!(
        err.contains("nobody/no-such-model") && err.contains("--model DIR"),
        "{err}"
    );
}

#[test]
fn a_local_model_directory_resolves_like_the_hub_id() {
    let files = sift_lab::hub::resolve(&common::default_model()).unwrap();
    let local = sift_lab::hub::resolve(&files.dir().to_string_lossy()).unwrap();
    assert_eq!(local.weights, files.weights);
    assert!(files.revision.is_some() && local.revision.is_none());
}
