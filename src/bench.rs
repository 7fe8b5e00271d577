//! `sift-lab bench`: seconds per forward batch and per training step of the encoder on fixed
//! shapes, for side-by-side comparison with PyTorch (scripts/bench_torch.py measures the same;
//! scripts/bench_compare.py runs both and prints the ratios).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backprop;
use crate::data::{BatchOrder, Dataset, Split, Task};
use crate::methods::{FineTuning, MethodKind};
use crate::model::{self, Pretrained};
use crate::optim::{AdamW, AdamWConfig};
use crate::{budget, select};

/// What one benchmark process measures (one arm per process, so peak RSS is per arm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arm {
    /// Inference forward pass.
    Forward,
    /// Full fine-tuning step.
    Full,
    /// SIFT step: 1 % of each attention q, k, v, o weight + the head.
    Sift,
    /// LoRA step: rank `lora_rank` on q, k, v, o + the head.
    Lora,
    /// Greedy generation with the KV cache (decoders: `--decoder`).
    Generate,
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: String,
    /// Benchmark the decoder path (`bench_lm`) instead of the encoder.
    pub decoder: bool,
    /// `None`: the default set (forward, forward+backward, full step) on random tokens.
    pub arm: Option<Arm>,
    /// Real inputs: the first `batch_size` training examples, padded to `seq_len`.
    pub task: Option<(Task, PathBuf)>,
    pub batch_size: usize,
    pub seq_len: usize,
    pub lora_rank: usize,
    pub warmup: usize,
    pub iters: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub framework: &'static str,
    pub arm: Option<Arm>,
    pub task: Option<String>,
    pub threads: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Median seconds of one inference forward pass.
    pub forward_s: Option<f64>,
    /// Median seconds of forward + loss + backward over every parameter.
    pub forward_backward_s: Option<f64>,
    /// Median seconds of one training step of the arm (forward, backward, AdamW update).
    pub train_step_s: Option<f64>,
    pub trainable_params: Option<usize>,
    pub optimizer_state_bytes: Option<usize>,
    /// Greedy generation: new tokens per second (decoders).
    pub generate_tokens_per_s: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

impl BenchReport {
    /// An empty report of `config`'s shapes, filled in by the arm that runs.
    pub fn new(config: &BenchConfig) -> BenchReport {
        BenchReport {
            framework: "sift-lab (candle)",
            arm: config.arm,
            task: config.task.as_ref().map(|(t, _)| t.name().to_string()),
            threads: candle_core::utils::get_num_threads(),
            batch_size: config.batch_size,
            seq_len: config.seq_len,
            forward_s: None,
            forward_backward_s: None,
            train_step_s: None,
            trainable_params: None,
            optimizer_state_bytes: None,
            generate_tokens_per_s: None,
            peak_rss_mib: None,
        }
    }
}

/// The median of `xs` (the upper one of an even count); `xs` must not be empty.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// The median seconds of `iters` calls of `f` after `warmup` untimed ones.
pub fn time<F: FnMut() -> Result<()>>(warmup: usize, iters: usize, mut f: F) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut seconds = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    Ok(median(seconds))
}

/// A fixed batch: (input ids, token types, mask, labels), all (B, T) but labels (B,).
struct Inputs {
    ids: Tensor,
    types: Tensor,
    mask: Tensor,
    labels: Tensor,
}

fn inputs(config: &BenchConfig, pretrained: &Pretrained, device: &Device) -> Result<Inputs> {
    let (b, t) = (config.batch_size, config.seq_len);
    if let Some((task, data_dir)) = &config.task {
        let data = Dataset::load(
            data_dir,
            *task,
            Split::Train,
            &pretrained.tokenizer,
            t,
            Some(b),
        )?;
        let batch = data
            .batches(b, BatchOrder::Sequential, device)
            .next()
            .with_context(|| {
                format!(
                    "--task {task}: the train split in {} has no examples to benchmark on",
                    data_dir.display()
                )
            })??;
        // Pad to exactly T, as the PyTorch side does (padding="max_length").
        let pad = |x: &Tensor, value: u32| -> Result<Tensor> {
            let missing = t - x.dim(1)?;
            if missing == 0 {
                return Ok(x.clone());
            }
            let fill = (Tensor::ones((x.dim(0)?, missing), DType::U32, device)? * value as f64)?;
            Ok(Tensor::cat(&[x, &fill], 1)?)
        };
        return Ok(Inputs {
            ids: pad(&batch.input_ids, data.pad_id)?,
            types: pad(&batch.token_type_ids, 0)?,
            mask: pad(&batch.attention_mask, 0)?,
            labels: batch.labels,
        });
    }
    // Full-length rows of random word pieces between [CLS] and [SEP]: no padding.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<u32> = (0..b * t)
        .map(|i| match i % t {
            0 => 101,
            p if p == t - 1 => 102,
            _ => rng.random_range(1000..30000),
        })
        .collect();
    Ok(Inputs {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        types: Tensor::zeros((b, t), DType::U32, device)?,
        mask: Tensor::ones((b, t), DType::U32, device)?,
        labels: Tensor::from_vec((0..b as u32).map(|i| i % 2).collect::<Vec<_>>(), b, device)?,
    })
}

/// Times training steps of `method`: rebuild effective weights, forward, backward, AdamW.
fn time_training(
    method: &FineTuning,
    pretrained: &Pretrained,
    x: &Inputs,
    config: &BenchConfig,
) -> Result<(f64, usize, usize)> {
    let mut optimizer = AdamW::new(method.params()?, AdamWConfig::default())?;
    let seconds = time(config.warmup, config.iters, || {
        let classifier = pretrained.build(&method.effective_weights()?)?;
        let (_, grads) =
            backprop::loss_and_gradients(&classifier, &x.ids, &x.types, &x.mask, &x.labels)?;
        let gradients = optimizer.gradients(&grads)?;
        optimizer.step(&gradients, 1e-5)?;
        Ok(())
    })?;
    Ok((seconds, method.trainable_count()?, optimizer.state_bytes()))
}

impl BenchConfig {
    /// Rejects shapes that cannot be measured, naming the flag.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            bail!("--batch-size 0: a batch needs at least one row");
        }
        if self.seq_len < 2 {
            bail!(
                "--seq-len {}: a row needs at least 2 tokens ([CLS] and [SEP])",
                self.seq_len
            );
        }
        if self.iters == 0 {
            bail!("--iters 0: at least one timed iteration is needed");
        }
        if self.arm == Some(Arm::Lora) && self.lora_rank == 0 {
            bail!("--lora-rank 0: the rank must be at least 1");
        }
        Ok(())
    }
}

pub fn run(config: &BenchConfig) -> Result<BenchReport> {
    if config.decoder {
        return crate::bench_lm::run(config);
    }
    config.validate()?;
    if config.arm == Some(Arm::Generate) {
        bail!("--arm generate measures a decoder; add --decoder");
    }
    let device = Device::Cpu;
    let num_labels = config.task.as_ref().map_or(2, |(t, _)| t.num_labels());
    let pretrained = model::load_pretrained(&config.model, None, num_labels, 0, &device)?;
    let limit = pretrained.max_positions();
    if config.seq_len > limit {
        bail!(
            "--seq-len {}: the model takes at most {limit} tokens (max_position_embeddings in {})",
            config.seq_len,
            pretrained.files.config.display()
        );
    }
    if config.task.is_some() && config.seq_len < crate::data::MIN_MAX_LEN {
        bail!(
            "--seq-len {}: with --task the rows are real examples, truncated to --seq-len tokens: give at least {}",
            config.seq_len,
            crate::data::MIN_MAX_LEN
        );
    }
    let x = inputs(config, &pretrained, &device)?;
    let head = model::weights::head_names(&pretrained.config, num_labels)?;
    let targets = select::target_names("q,k,v,o", &pretrained.config)?;
    let mut report = BenchReport::new(config);
    let forward = || -> Result<f64> {
        let classifier = pretrained.build(&pretrained.weights)?;
        time(config.warmup, config.iters, || {
            backprop::logits(&classifier, &x.ids, &x.types, &x.mask)?;
            Ok(())
        })
    };
    let full = || FineTuning::dense(MethodKind::Full, &pretrained.weights, &head);
    let mut record = |(s, n, bytes): (f64, usize, usize)| {
        report.train_step_s = Some(s);
        report.trainable_params = Some(n);
        report.optimizer_state_bytes = Some(bytes);
    };
    match config.arm {
        Some(Arm::Forward) => report.forward_s = Some(forward()?),
        Some(Arm::Full) => record(time_training(&full()?, &pretrained, &x, config)?),
        Some(Arm::Sift) => {
            // Selection is not part of a step; a seeded draw of the same budget stands in for it.
            let shapes: Vec<(String, Vec<usize>)> = targets
                .iter()
                .map(|n| (n.clone(), pretrained.weights[n].dims().to_vec()))
                .collect();
            let selected = budget::select_random(&shapes, 0.01, 0);
            record(time_training(
                &FineTuning::sparse(MethodKind::Sift, &pretrained.weights, &head, &selected)?,
                &pretrained,
                &x,
                config,
            )?)
        }
        Some(Arm::Lora) => {
            let method = FineTuning::lora(
                &pretrained.weights,
                &head,
                &targets,
                config.lora_rank,
                2.0 * config.lora_rank as f64,
                0,
            )?;
            record(time_training(&method, &pretrained, &x, config)?)
        }
        Some(Arm::Generate) => unreachable!("rejected above"),
        None => {
            report.forward_s = Some(forward()?);
            let method = full()?;
            let classifier = pretrained.build(&method.effective_weights()?)?;
            report.forward_backward_s = Some(time(config.warmup, config.iters, || {
                backprop::loss_and_gradients(&classifier, &x.ids, &x.types, &x.mask, &x.labels)?;
                Ok(())
            })?);
            record(time_training(&method, &pretrained, &x, config)?);
        }
    }
    report.peak_rss_mib = crate::peak_rss::peak_rss_mib();
    Ok(report)
}
