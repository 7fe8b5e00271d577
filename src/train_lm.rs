//! `sift-lab train --instructions FILE`: instruction tuning of a LLaMA-architecture decoder on
//! Alpaca-style records (`data::alpaca`) with every method of `methods.rs` (full, SIFT, random,
//! LoRA; a decoder has no task head), the loss on response tokens only, and the held-out
//! response loss and perplexity after every epoch. Training steps run the decoder's own
//! training pass (`backprop::llama`), with AdamW, the schedule and clipping of `optim.rs`.
//!
//! Writes metrics.parquet (one row per epoch), summary.json and delta.safetensors to `--out`,
//! and after every epoch `state/` (`checkpoint.rs`: trainable values, AdamW moments, selection,
//! the epochs so far), from which `--resume` continues an interrupted run (Ctrl-C: exit 130,
//! summary status "interrupted") to the result an uninterrupted run gives: each epoch's order is
//! a function of the seed and the epoch, so nothing else needs saving.
//! `--export-hf DIR`: θ1 + Δ merged as a transformers `LlamaForCausalLM` checkpoint. Not yet:
//! per-step rows.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use polars::prelude::DataFrame;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backprop::llama::{loss, loss_and_gradients, LmBatch};
use crate::budget;
use crate::checkpoint::{
    read_checkpoint, restore_optimizer, restore_values, saved_selection, write_checkpoint,
    STATE_DIR,
};
use crate::data::alpaca::{self, EncodedInstruction};
use crate::methods::{FineTuning, MethodKind};
use crate::model::decoder::load_decoder;
use crate::model::llama::Llama;
use crate::model::{EffectiveWeights, WeightMap};
use crate::optim::{self, AdamW, AdamWConfig};
use crate::run_lock::RunLock;
use crate::{output, progress, select};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LmTrainConfig {
    pub model: String,
    pub instructions: PathBuf,
    pub method: MethodKind,
    pub modules: String,
    pub rate: f64,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub max_len: usize,
    /// Fraction of the records held out (drawn from `seed`).
    pub held_out: f64,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Train on only the first N training records (quick runs, tests).
    pub train_limit: Option<usize>,
    /// Evaluate on only the first N held-out records.
    pub eval_limit: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct LmTrainOptions {
    pub out: PathBuf,
    /// Also write θ1 + Δ merged as a transformers `LlamaForCausalLM` checkpoint here.
    pub export_hf: Option<PathBuf>,
    /// Continue the run in `out` after its last completed epoch.
    pub resume: bool,
}

/// What `--resume` restores besides the tensors.
#[derive(Debug, Serialize, Deserialize)]
struct LmCheckpoint {
    config: LmTrainConfig,
    epochs_completed: usize,
    steps: usize,
    initial_held_out_loss: f64,
    epochs: Vec<EpochRow>,
    seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub steps: usize,
    pub train_loss: f64,
    pub held_out_loss: f64,
    pub held_out_perplexity: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmTrainSummary {
    pub config: LmTrainConfig,
    pub status: String,
    pub train_records: usize,
    pub held_out_records: usize,
    /// Records whose prompt left no room for a response within --max-len.
    pub dropped_records: usize,
    pub trainable_params: usize,
    pub optimizer_state_bytes: usize,
    pub gradient_state_bytes: usize,
    /// Before any update.
    pub initial_held_out_loss: f64,
    /// Indices (in the file) of the held-out records the loss is computed on.
    pub held_out_records_used: Vec<usize>,
    pub epochs: Vec<EpochRow>,
    pub peak_rss_mib: Option<f64>,
    pub seconds: f64,
    pub version: String,
}

fn batch_of(examples: &[&EncodedInstruction]) -> LmBatch {
    LmBatch {
        rows: examples.iter().map(|e| e.ids.clone()).collect(),
        targets_from: examples.iter().map(|e| e.prompt_len).collect(),
    }
}

fn build(config: &crate::model::config::LlamaConfig, weights: &EffectiveWeights) -> Result<Llama> {
    Ok(Llama::new(config, &weights.weights, &weights.increments)?)
}

/// Target-token mean loss over `examples`, `batch_size` at a time.
fn held_out_loss(
    model: &Llama,
    examples: &[&EncodedInstruction],
    batch_size: usize,
) -> Result<f64> {
    let (mut sum, mut count) = (0.0, 0usize);
    for chunk in examples.chunks(batch_size) {
        let batch = batch_of(chunk);
        let n = batch.targets();
        sum += loss(model, &batch)? * n as f64;
        count += n;
    }
    if count == 0 {
        bail!("no held-out target tokens");
    }
    Ok(sum / count as f64)
}

pub fn run(config: &LmTrainConfig, options: &LmTrainOptions) -> Result<LmTrainSummary> {
    let started = Instant::now();
    if !(config.rate > 0.0 && config.rate <= 1.0) {
        bail!("--rate {}: must be in (0, 1]", config.rate);
    }
    if config.epochs == 0 || config.batch_size == 0 || config.max_len < 2 {
        bail!("--epochs and --batch-size must be at least 1, --max-len at least 2");
    }
    if config.method == MethodKind::Head {
        bail!("--method head: a decoder has no task head; use full, sift, random or lora");
    }
    let out = &options.out;
    // One writer per run directory, from before the first read of its state to the end.
    let _lock = RunLock::dir(out)?;
    let state_dir = out.join(STATE_DIR);
    let previous: Option<LmCheckpoint> = read_checkpoint(&state_dir)?;
    match (&previous, options.resume) {
        (Some(_), false) => bail!("{} already holds a run: pass --resume to continue it, or choose another --out", out.display()),
        (Some(p), true) if p.config != *config => bail!("--resume: {} was started with other settings ({}); rerun with the same flags or another --out", out.display(), output::describe_differences(&output::config_differences(&p.config, config)?)),
        (None, false) => output::ensure_absent(
            &[out.join(output::SUMMARY_FILE), out.join("metrics.parquet"), out.join("delta.safetensors")],
            "choose another --out (this directory holds an earlier run without a checkpoint to resume)",
        )?,
        _ => {}
    }
    if let Some(p) = previous
        .as_ref()
        .filter(|p| p.epochs_completed >= config.epochs)
    {
        eprintln!(
            "{} is already complete ({} of {} epochs): nothing to do",
            out.display(),
            p.epochs_completed,
            config.epochs
        );
        return read_summary(out);
    }
    let decoder = load_decoder(&config.model, &Device::Cpu)?;
    let records = alpaca::load(&config.instructions)?;
    let eos = decoder.config.eos_token_id.unwrap_or(0);
    let (encoded, dropped) = alpaca::encode(
        &records,
        |text, prompt| {
            let e = decoder
                .tokenizer
                .encode(text, prompt)
                .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
            Ok(e.get_ids().to_vec())
        },
        eos,
        config.max_len,
    )?;
    let (train_idx, held_idx) =
        alpaca::held_out_split(encoded.len(), config.held_out, config.seed)?;
    let mut train: Vec<&EncodedInstruction> = train_idx.iter().map(|&i| &encoded[i]).collect();
    if let Some(limit) = config.train_limit {
        train.truncate(limit);
    }
    let mut held: Vec<&EncodedInstruction> = held_idx.iter().map(|&i| &encoded[i]).collect();
    if let Some(limit) = config.eval_limit {
        held.truncate(limit);
    }
    if train.is_empty() || held.is_empty() {
        bail!("no training or held-out records left");
    }

    let base: WeightMap = decoder.weights.clone();
    let names: Vec<String> = decoder
        .config
        .tensor_shapes()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let targets = select::decoder_target_names(&config.modules, &names)?;
    let shapes: Vec<(String, Vec<usize>)> = targets
        .iter()
        .map(|n| (n.clone(), base[n].dims().to_vec()))
        .collect();
    let order = |epoch: usize| {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            config
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(epoch as u64),
        ));
        order
    };
    let method = match config.method {
        MethodKind::Full => FineTuning::dense(MethodKind::Full, &base, &[])?,
        MethodKind::Lora => FineTuning::lora(
            &base,
            &[],
            &targets,
            config.lora_rank,
            config.lora_alpha,
            config.seed,
        )?,
        MethodKind::Random => FineTuning::sparse(
            MethodKind::Random,
            &base,
            &[],
            &budget::select_random(&shapes, config.rate, config.seed),
        )?,
        // Resumed: the selection saved with the checkpoint, not a new gradient.
        MethodKind::Sift if previous.is_some() => FineTuning::sparse(
            MethodKind::Sift,
            &base,
            &[],
            &saved_selection(&state_dir, &targets)?,
        )?,
        MethodKind::Sift => {
            // G at θ1 on the first batch of the first epoch's order.
            let first: Vec<&EncodedInstruction> = order(0)
                .into_iter()
                .take(config.batch_size)
                .map(|i| train[i])
                .collect();
            let probe = FineTuning::dense(MethodKind::Full, &base, &[])?;
            let weights = probe.effective_weights()?;
            let mut frozen = weights.clone();
            for (name, t) in frozen.weights.iter_mut() {
                if !targets.contains(name) {
                    *t = t.detach();
                }
            }
            let model = build(&decoder.config, &frozen)?;
            let (_, grads) = loss_and_gradients(&model, &batch_of(&first))?;
            let mut gradients = BTreeMap::new();
            for name in &targets {
                let g = grads
                    .get(&frozen.weights[name])
                    .ok_or_else(|| anyhow::anyhow!("no selection gradient for {name}"))?;
                gradients.insert(name.clone(), g.flatten_all()?.to_vec1::<f32>()?);
            }
            let selected =
                budget::select_by_gradient(&gradients, config.rate, budget::Selection::PerTensor);
            FineTuning::sparse(MethodKind::Sift, &base, &[], &selected)?
        }
        MethodKind::Head => unreachable!(),
    };
    let trainable = method.trainable_count()?;
    let mut optimizer = AdamW::new(
        method.params()?,
        AdamWConfig {
            weight_decay: config.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    if previous.is_some() {
        restore_values(&method, &state_dir)?;
        restore_optimizer(&mut optimizer, &state_dir)?;
    }
    let steps_per_epoch = train.len().div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;
    let warmup = (config.warmup_ratio * total_steps as f64).round() as usize;
    let eval_batch = config.batch_size.max(8);
    let (initial, mut epochs, mut steps, first_epoch, seconds_before) = match &previous {
        Some(p) => {
            eprintln!(
                "resuming {} after epoch {} (step {})",
                out.display(),
                p.epochs_completed,
                p.steps
            );
            (
                p.initial_held_out_loss,
                p.epochs.clone(),
                p.steps,
                p.epochs_completed,
                p.seconds,
            )
        }
        None => {
            let initial = held_out_loss(
                &build(&decoder.config, &method.effective_weights()?)?,
                &held,
                eval_batch,
            )?;
            eprintln!(
                "{} trainable; held-out loss before training {initial:.4} (perplexity {:.2})",
                trainable,
                initial.exp()
            );
            (initial, Vec::new(), 0, 0, 0.0)
        }
    };
    let mut status = "completed";
    'epochs: for epoch in first_epoch..config.epochs {
        let bar = progress::bar(steps_per_epoch as u64, "steps");
        let (mut loss_sum, mut loss_count) = (0.0, 0usize);
        let order = order(epoch);
        for chunk in order.chunks(config.batch_size) {
            if progress::interrupted() {
                status = "interrupted";
                break 'epochs;
            }
            let examples: Vec<&EncodedInstruction> = chunk.iter().map(|&i| train[i]).collect();
            let model = build(&decoder.config, &method.effective_weights()?)?;
            let (value, grads) = loss_and_gradients(&model, &batch_of(&examples))?;
            if !value.is_finite() {
                status = "diverged";
                break 'epochs;
            }
            let mut gradients = optimizer.gradients(&grads)?;
            optim::clip_global_norm(&mut gradients, config.max_grad_norm)?;
            optimizer.step(
                &gradients,
                optim::linear_schedule(steps, warmup, total_steps, config.lr),
            )?;
            steps += 1;
            loss_sum += value;
            loss_count += 1;
            bar.inc(1);
            bar.set_message(format!(
                "epoch {} loss {:.4}",
                epoch + 1,
                loss_sum / loss_count as f64
            ));
        }
        bar.finish_and_clear();
        let model = build(&decoder.config, &method.effective_weights()?)?;
        let held_loss = held_out_loss(&model, &held, eval_batch)?;
        let row = EpochRow {
            epoch: epoch + 1,
            steps,
            train_loss: loss_sum / loss_count.max(1) as f64,
            held_out_loss: held_loss,
            held_out_perplexity: held_loss.exp(),
            seconds: seconds_before + started.elapsed().as_secs_f64(),
        };
        eprintln!(
            "epoch {}: train loss {:.4}, held-out loss {:.4} (perplexity {:.2})",
            row.epoch, row.train_loss, row.held_out_loss, row.held_out_perplexity
        );
        epochs.push(row);
        let checkpoint = LmCheckpoint {
            config: config.clone(),
            epochs_completed: epoch + 1,
            steps,
            initial_held_out_loss: initial,
            epochs: epochs.clone(),
            seconds: seconds_before + started.elapsed().as_secs_f64(),
        };
        write_checkpoint(&state_dir, &checkpoint, &method, &optimizer)?;
        write_metrics(out, &epochs, config)?;
    }
    write_metrics(out, &epochs, config)?;
    let (tensors, meta) = method.delta_tensors()?;
    let views: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = meta;
    safetensors::serialize_to_file(
        views.iter().map(|(n, t)| (n.as_str(), t)),
        Some(meta),
        &out.join("delta.safetensors"),
    )?;
    if let Some(dir) = &options.export_hf {
        crate::model::decoder::save_transformers(
            dir,
            &decoder.config,
            &method.merged()?,
            &decoder.tokenizer,
        )?;
    }
    let summary = LmTrainSummary {
        config: config.clone(),
        status: status.into(),
        train_records: train.len(),
        held_out_records: held.len(),
        dropped_records: dropped,
        trainable_params: trainable,
        optimizer_state_bytes: optimizer.state_bytes(),
        gradient_state_bytes: trainable * 4,
        initial_held_out_loss: initial,
        held_out_records_used: held.iter().map(|e| e.record).collect(),
        epochs,
        peak_rss_mib: crate::peak_rss::peak_rss_mib(),
        seconds: seconds_before + started.elapsed().as_secs_f64(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    output::write_json(&out.join(output::SUMMARY_FILE), &summary)?;
    if status == "diverged" {
        bail!("training diverged (loss is not finite); lower --lr");
    }
    Ok(summary)
}

/// metrics.parquet: one row per completed epoch, the settings in its metadata.
fn write_metrics(out: &Path, rows: &[EpochRow], config: &LmTrainConfig) -> Result<()> {
    let mut frame = DataFrame::new_infer_height(vec![
        output::column_of("epoch", rows, |r| r.epoch as u32),
        output::column_of("step", rows, |r| r.steps as u32),
        output::column_of("train_loss", rows, |r| r.train_loss),
        output::column_of("held_out_loss", rows, |r| r.held_out_loss),
        output::column_of("held_out_perplexity", rows, |r| r.held_out_perplexity),
        output::column_of("seconds", rows, |r| r.seconds),
    ])?;
    output::write_parquet(
        &mut frame,
        &out.join("metrics.parquet"),
        &[("config".to_string(), serde_json::to_string(config)?)],
    )
}

/// The summary of a finished run.
fn read_summary(out: &Path) -> Result<LmTrainSummary> {
    let path = out.join(output::SUMMARY_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: the run's checkpoint is complete but its summary is missing; remove {} to train again",
            path.display(),
            out.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: unreadable summary", path.display()))
}
