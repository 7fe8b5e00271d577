//! `train --instructions --resume`: a decoder run interrupted (Ctrl-C) after its first epoch and
//! resumed ends with the metrics and Δ of the same run left uninterrupted.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};

fn args(out: &Path, extra: &[&str]) -> Vec<String> {
    let alpaca = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/alpaca/alpaca_data_1k.json"
    );
    let mut a: Vec<String> = [
        "--threads",
        "2",
        "train",
        "--instructions",
        alpaca,
        "--method",
        "sift",
        "--modules",
        "q,v",
        "--rate",
        "0.05",
        "--lr",
        "1e-3",
        "--warmup-ratio",
        "0.25",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--max-len",
        "48",
        "--train-limit",
        "8",
        "--eval-limit",
        "4",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(out.display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn an_interrupted_decoder_run_resumes_to_the_uninterrupted_result() {
    let dir = common::temp_dir("lm-resume");
    let clean = dir.path().join("clean");
    common::run_ok(common::sift_lab().args(args(&clean, &[])));

    let killed = dir.path().join("killed");
    let mut child = common::sift_lab()
        .args(args(&killed, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = killed.join("state/checkpoint.json");
    let started = Instant::now();
    while !checkpoint.exists() {
        assert!(started.elapsed().as_secs() < 300, "no checkpoint written");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let interrupted = summary(&killed);
    assert_eq!(interrupted["status"], "interrupted");
    assert_eq!(interrupted["epochs"].as_array().unwrap().len(), 1);
    // A plain rerun is refused, and so are other settings.
    let err = common::run_err(common::sift_lab().args(args(&killed, &[])));
    assert!(err.contains("--resume"), "{err}");
    let err =
        common::run_err(common::sift_lab().args(args(&killed, &["--resume", "--held-out", "0.2"])));
    assert!(err.contains("held_out: was 0.1, now 0.2"), "{err}");
    common::run_ok(common::sift_lab().args(args(&killed, &["--resume"])));

    let (a, b) = (summary(&clean), summary(&killed));
    assert_eq!(b["status"], "completed");
    assert_eq!(a["initial_held_out_loss"], b["initial_held_out_loss"]);
    let (ea, eb) = (
        a["epochs"].as_array().unwrap(),
        b["epochs"].as_array().unwrap(),
    );
    assert_eq!(ea.len(), 2);
    assert_eq!(eb.len(), 2);
    for (x, y) in ea.iter().zip(eb) {
        assert_eq!(x["steps"], y["steps"]);
        for key in ["train_loss", "held_out_loss"] {
            let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (u - v).abs() <= 1e-6 * u.abs().max(1.0),
                "{key}: {u} vs {v}"
            );
        }
    }
    // Training moved the loss, so equal losses are not equal by default.
    assert_ne!(ea[1]["held_out_loss"], a["initial_held_out_loss"]);
    let read = |d: &Path| {
        candle_core::safetensors::load(d.join("delta.safetensors"), &Device::Cpu).unwrap()
    };
    let (da, db) = (read(&clean), read(&killed));
    assert_eq!(da.len(), db.len());
    assert!(!da.is_empty());
    for (name, t) in &da {
        let u = t.to_dtype(DType::F64).unwrap();
        let v = db[name].to_dtype(DType::F64).unwrap();
        let diff = (&u - &v)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-6, "{name} differs by {diff}");
    }
    // Resuming a finished run changes nothing.
    common::run_ok(common::sift_lab().args(args(&killed, &["--resume"])));
    assert_eq!(summary(&killed)["epochs"], b["epochs"]);
}
