//! Fixtures shared by the integration tests: the real default model and the real GLUE data.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Device;
use sift_lab::data::{Dataset, Split, Task};
use sift_lab::hub::{self, DEFAULT_MODEL};
use sift_lab::model::{self, Pretrained};

/// The GLUE copy in the shared folder beside the repository.
pub fn glue_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/glue");
    assert!(
        dir.join("RTE/dev.tsv").is_file(),
        "GLUE data not found at {}",
        dir.display()
    );
    dir
}

/// The default model, resolved through the hub cache as the CLI does.
pub fn default_model() -> String {
    if let Err(e) = hub::resolve(DEFAULT_MODEL) {
        panic!("{e:#}\n(the tests need the default model: run scripts/setup-model.sh)");
    }
    DEFAULT_MODEL.to_string()
}

pub fn pretrained(num_labels: usize) -> Pretrained {
    model::load_pretrained(&default_model(), None, num_labels, 0, &Device::Cpu)
        .expect("load default model")
}

pub fn dataset(
    pretrained: &Pretrained,
    task: Task,
    split: Split,
    max_len: usize,
    limit: usize,
) -> Dataset {
    Dataset::load(
        &glue_dir(),
        task,
        split,
        &pretrained.tokenizer,
        max_len,
        Some(limit),
    )
    .expect("load GLUE")
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("sift-lab-{tag}-"))
        .tempdir()
        .expect("temp dir")
}

/// A small training configuration on RTE with the default model.
pub fn train_config(
    method: &str,
    batch_size: usize,
    selection_batches: usize,
) -> sift_lab::train::TrainConfig {
    use clap::ValueEnum;
    sift_lab::train::TrainConfig {
        model: default_model(),
        task: Task::Rte,
        data_dir: glue_dir(),
        method: sift_lab::methods::MethodKind::from_str(method, true).unwrap(),
        modules: "q,k,v,o".into(),
        rate: 0.01,
        selection_batches,
        selection: sift_lab::budget::Selection::PerTensor,
        lora_rank: 8,
        lora_alpha: 16.0,
        epochs: 1,
        lr: 1e-3,
        batch_size,
        max_len: 48,
        weight_decay: 0.0,
        warmup_ratio: 0.06,
        max_grad_norm: 1.0,
        seed: 42,
        train_limit: None,
        eval_limit: None,
        log_every: 10,
        selector: Default::default(),
    }
}

/// The release binary under test, offline.
pub fn sift_lab() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sift-lab"));
    cmd.env("HF_HUB_OFFLINE", "1");
    cmd
}

/// Runs `cmd`, asserts success, returns stdout.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `cmd`, asserts failure, returns stderr.
pub fn run_err(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "should have failed, printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// The first `n` RTE training examples (pairs, so both token types occur) as one batch.
pub fn rte_batch(pretrained: &Pretrained, n: usize, max_len: usize) -> sift_lab::data::Batch {
    dataset(pretrained, Task::Rte, Split::Train, max_len, n)
        .batches(n, sift_lab::data::BatchOrder::Sequential, &Device::Cpu)
        .next()
        .unwrap()
        .unwrap()
}

/// The batch's mean loss through the candle-graph forward (what candle's autograd
/// differentiates) of the classifier over `weights` (a weight map or a method's effective
/// weights).
pub fn loss_of(
    pretrained: &Pretrained,
    weights: &impl model::ClassifierWeights,
    batch: &sift_lab::data::Batch,
    mode: model::Mode,
) -> candle_core::Tensor {
    let logits = pretrained
        .build(weights)
        .unwrap()
        .forward(
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
            mode,
        )
        .unwrap();
    model::mean_loss(&logits, &batch.labels).unwrap()
}

/// `shape` draws of N(0, std²) from a ChaCha8 stream seeded with `seed`, as an f64 tensor.
pub fn seeded_normal(shape: &candle_core::Shape, std: f64, seed: u64) -> candle_core::Tensor {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0.0, std).unwrap();
    let values: Vec<f64> = (0..shape.elem_count())
        .map(|_| normal.sample(&mut rng))
        .collect();
    candle_core::Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// The largest |a − b| over two f32 tensors of one shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
