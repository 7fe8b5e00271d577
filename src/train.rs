//! `sift-lab train`: fine-tune a pretrained encoder on a GLUE task with one of the methods of
//! `methods.rs`, evaluating on dev after every epoch.
//!
//! RUN_DIR holds `metrics.parquet` (one row per logged step and per epoch), `summary.json`,
//! `delta.safetensors` (the increment alone), and `state/` (trainable values, optimizer moments
//! and rows so far, written after every epoch) from which `--resume` continues; with
//! `--reselect-every`, also `selection.parquet` (every reselection of the mask, see
//! `crate::selectors::reselect`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use crate::backprop;
use crate::budget::Selection;
use crate::checkpoint::{
    read_checkpoint, restore_optimizer, restore_values, saved_selection, write_checkpoint,
};
use crate::data::{BatchOrder, Dataset, Split, Task};
use crate::gradients::GradientSource;
use crate::methods::{FineTuning, MethodKind};
use crate::model::{self, Pretrained};
use crate::optim::{self, AdamW, AdamWConfig};
use crate::run_lock::RunLock;
use crate::select;
use crate::selectors::{self, reselect, SelectorConfig};
use crate::{eval, output, progress, trajectory};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub model: String,
    pub task: Task,
    pub data_dir: PathBuf,
    pub method: MethodKind,
    pub modules: String,
    pub rate: f64,
    pub selection_batches: usize,
    pub selection: Selection,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub max_len: usize,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Use only the first N training examples (quick runs, tests).
    pub train_limit: Option<usize>,
    /// Evaluate on only the first N dev examples.
    pub eval_limit: Option<usize>,
    /// Log a step row every N steps.
    pub log_every: usize,
    /// Which entries sift trains (the rule) and whether it reselects them (`crate::selectors`).
    #[serde(default)]
    pub selector: SelectorConfig,
}

impl TrainConfig {
    /// Rejects settings that cannot run, naming the flag.
    pub fn validate(&self) -> Result<()> {
        if !(self.rate > 0.0 && self.rate <= 1.0) {
            bail!(
                "--rate {}: must be in (0, 1] (a fraction of each tensor, e.g. 0.01 for 1 %)",
                self.rate
            );
        }
        if self.method == MethodKind::Lora && self.lora_rank == 0 {
            bail!("--lora-rank 0: the rank must be at least 1");
        }
        if self.epochs == 0 {
            bail!("--epochs 0: must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("--batch-size 0: must be at least 1");
        }
        if self.selection_batches == 0 {
            bail!("--selection-batches must be at least 1");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            bail!("--warmup-ratio {}: must be in [0, 1)", self.warmup_ratio);
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr {}: must be a positive number", self.lr);
        }
        crate::data::check_max_len_flag(self.max_len)?;
        if self.train_limit == Some(0) {
            bail!("--train-limit 0: keeps no training examples; give at least 1 (or leave it out for all)");
        }
        if self.eval_limit == Some(0) {
            bail!("--eval-limit 0: keeps no dev examples, so no epoch could be scored; give at least 1 (or leave it out for all)");
        }
        if self.log_every == 0 {
            bail!("--log-every 0: give at least 1 (a training-loss row every N steps)");
        }
        self.selector.validate(self.method)?;
        Ok(())
    }
}

/// One row of metrics.parquet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricRow {
    /// "step" (training loss over the last logged steps) or "epoch" (dev evaluation).
    pub kind: String,
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub lr: f64,
    pub seconds: f64,
    pub trainable_params: usize,
    pub dev_loss: Option<f64>,
    pub dev_metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochResult {
    pub epoch: usize,
    pub dev_loss: f64,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub config: TrainConfig,
    /// "completed", "interrupted" or "diverged".
    pub status: String,
    pub epochs_completed: usize,
    pub steps: usize,
    pub primary_metric: String,
    pub best_epoch: Option<EpochResult>,
    pub last_epoch: Option<EpochResult>,
    pub trainable_params: usize,
    /// AdamW moments.
    pub optimizer_state_bytes: usize,
    /// Gradients the optimizer reads (one per trainable scalar).
    pub gradient_state_bytes: usize,
    pub peak_rss_mib: Option<f64>,
    pub seconds: f64,
    pub version: String,
}

/// What `--resume` restores.
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    config: TrainConfig,
    epochs_completed: usize,
    steps: usize,
    rows: Vec<MetricRow>,
    epochs: Vec<EpochResult>,
    seconds: f64,
    /// The divergence rule's state: the first loss and the steps above its limit so far.
    #[serde(default)]
    divergence: Divergence,
}

/// The divergence rule: a run has diverged when a training loss is not finite, or when it
/// exceeds `DIVERGENCE_FACTOR` × max(L₁, ln C) on `DIVERGENCE_PATIENCE` consecutive steps, L₁
/// being the run's first loss (at the starting weights, before any update, so a learning rate
/// that blows up the very next step cannot raise the bar) and ln C the loss of a uniform guess
/// over C classes (0 for regression), a floor so that a lucky first batch cannot lower it.
/// For a binary task that starts at 0.69: above 6.9 for 3 steps in a row, i.e. confidently
/// wrong almost everywhere.
pub const DIVERGENCE_FACTOR: f64 = 10.0;
pub const DIVERGENCE_PATIENCE: usize = 3;

/// The state of the divergence rule along a run (saved with every checkpoint).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Divergence {
    /// ln C of the task.
    pub floor: f64,
    /// The run's first loss, once seen.
    pub first_loss: Option<f64>,
    /// Consecutive steps above the limit.
    pub steps_above: usize,
}

impl Divergence {
    pub fn new(num_labels: usize) -> Divergence {
        Divergence {
            floor: (num_labels.max(1) as f64).ln(),
            ..Default::default()
        }
    }

    /// Records one step's loss; returns why the run has diverged, if it has.
    pub fn observe(&mut self, loss: f64) -> Option<String> {
        if !loss.is_finite() {
            return Some(format!("the loss is {loss}"));
        }
        let Some(first) = self.first_loss else {
            self.first_loss = Some(loss);
            return None;
        };
        let limit = DIVERGENCE_FACTOR * first.max(self.floor);
        if loss > limit {
            self.steps_above += 1;
        } else {
            self.steps_above = 0;
        }
        (self.steps_above >= DIVERGENCE_PATIENCE).then(|| {
            format!(
                "the loss ({loss:.4e}) stayed above {limit:.4} ({DIVERGENCE_FACTOR} × max(first \
                 loss {first:.4}, ln C {:.4})) for {DIVERGENCE_PATIENCE} steps",
                self.floor
            )
        })
    }
}

/// Where a run writes and how it proceeds: nothing here changes its numbers, so none of it is
/// stored with the run or compared on `--resume`.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The run directory: metrics.parquet, summary.json, delta.safetensors, state/.
    pub out: PathBuf,
    /// Also write the merged model here as a transformers checkpoint.
    pub export_hf: Option<PathBuf>,
    /// Continue the run in `out` from its last completed epoch.
    pub resume: bool,
    /// Record a trajectory snapshot every this many steps (`crate::trajectory`).
    pub trajectory_every: Option<usize>,
}

impl TrainOptions {
    pub fn new(out: &Path) -> TrainOptions {
        TrainOptions {
            out: out.to_path_buf(),
            export_hf: None,
            resume: false,
            trajectory_every: None,
        }
    }
}

/// What a run returns: its summary (also `summary.json`) and its metrics table (also
/// `metrics.parquet`).
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub summary: TrainSummary,
    pub metrics: Vec<MetricRow>,
}

/// `sift-lab train`: fine-tunes `config.model` on `config.task` with `config.method`, writing
/// the run directory as it goes (see the module docs).
pub fn run(config: &TrainConfig, options: &TrainOptions) -> Result<TrainReport> {
    let (out, export_hf, resume) = (
        options.out.as_path(),
        options.export_hf.as_deref(),
        options.resume,
    );
    config.validate()?;
    if let Some(dir) = export_hf {
        check_export_dir(dir, out, &config.model)?;
    }
    // One writer per run directory, from before the first read of its state to the end.
    let _lock = RunLock::dir(out)?;
    let started = Instant::now();
    let device = Device::Cpu;
    let task = config.task;
    let pretrained =
        model::load_pretrained(&config.model, None, task.num_labels(), config.seed, &device)?;
    pretrained.check_max_len(config.max_len)?;

    let state_dir = out.join("state");
    let previous: Option<Checkpoint> = read_checkpoint(&state_dir)?;
    match (&previous, resume) {
        (Some(_), false) => bail!("{} already holds a run: pass --resume to continue it, or choose another --out", out.display()),
        (Some(p), true) if p.config != *config => bail!("--resume: {} was started with other settings ({}); rerun with the same flags or another --out", out.display(), output::describe_differences(&output::config_differences(&p.config, config)?)),
        (None, false) => output::ensure_absent(
            &[out.join("metrics.parquet"), summary_path(out), out.join(DELTA_FILE)],
            "choose another --out (this directory holds results of an earlier run)",
        )?,
        _ => {}
    }
    // A finished run resumed: nothing to train, and its files stay as they are.
    let finished = previous
        .as_ref()
        .is_some_and(|p| p.epochs_completed >= config.epochs);

    let train = Dataset::load(
        &config.data_dir,
        task,
        Split::Train,
        &pretrained.tokenizer,
        config.max_len,
        config.train_limit,
    )?;
    let dev = Dataset::load(
        &config.data_dir,
        task,
        Split::Dev,
        &pretrained.tokenizer,
        config.max_len,
        config.eval_limit,
    )?;

    let head = model::weights::head_names(&pretrained.config, pretrained.num_labels)?;
    let mut method = build_method(
        config,
        &pretrained,
        &train,
        &head,
        previous.as_ref().map(|_| state_dir.as_path()),
    )?;
    let mut optimizer = AdamW::new(
        method.params()?,
        AdamWConfig {
            weight_decay: config.weight_decay,
            ..Default::default()
        },
    )?;
    let (mut rows, mut epochs, mut steps, first_epoch, seconds_before, mut divergence) =
        match &previous {
            Some(p) => {
                restore_optimizer(&mut optimizer, &state_dir)?;
                if finished {
                    eprintln!(
                        "{} is already complete ({} of {} epochs): nothing to do",
                        out.display(),
                        p.epochs_completed,
                        config.epochs
                    );
                } else {
                    eprintln!(
                        "resuming {} after epoch {} (step {})",
                        out.display(),
                        p.epochs_completed,
                        p.steps
                    );
                }
                (
                    p.rows.clone(),
                    p.epochs.clone(),
                    p.steps,
                    p.epochs_completed,
                    p.seconds,
                    Divergence {
                        floor: Divergence::new(task.num_labels()).floor,
                        ..p.divergence.clone()
                    },
                )
            }
            None => (
                vec![],
                vec![],
                0,
                0,
                0.0,
                Divergence::new(task.num_labels()),
            ),
        };

    // Periodic reselection of the mask (`--reselect-every`), resumed with the checkpoint.
    let mut reselection = reselect::start_for(
        &config.selector,
        config.selection,
        config.weight_decay,
        &method,
        &pretrained.weights,
        previous.as_ref().map(|p| (state_dir.as_path(), p.steps)),
    )?;

    let trainable = method.trainable_count()?;
    let batches_per_epoch = train.num_batches(config.batch_size);
    let total_steps = batches_per_epoch * config.epochs;
    let warmup = (config.warmup_ratio * total_steps as f64).ceil() as usize;
    let mut status = "completed";
    let primary = crate::metrics::primary_metric(task);

    let mut recorder = match options.trajectory_every {
        Some(every) => Some(trajectory::Recorder::new(
            out,
            every,
            previous.as_ref().map(|p| p.steps),
        )?),
        None => None,
    };
    if let Some(recorder) = recorder.as_mut().filter(|_| steps == 0) {
        recorder.record(0, 0, f64::NAN, &method.increments()?)?;
    }

    'epochs: for epoch in first_epoch..config.epochs {
        let bar = progress::bar(batches_per_epoch as u64, "steps");
        bar.set_message(format!("epoch {}/{}", epoch + 1, config.epochs));
        let (mut loss_sum, mut loss_count) = (0.0, 0usize);
        for batch in train.batches(
            config.batch_size,
            BatchOrder::Shuffled {
                seed: config.seed,
                epoch: epoch as u64,
            },
            &device,
        ) {
            if progress::interrupted() {
                status = "interrupted";
                break 'epochs;
            }
            let batch = batch?;
            // Rebuilt every step from the live Vars, so the last update is in this forward.
            let mut weights = method.effective_weights()?;
            if let Some(r) = &reselection {
                r.track(&mut weights);
            }
            let classifier = pretrained.build(&weights)?;
            let (loss_value, grads) = backprop::loss_and_gradients(
                &classifier,
                &batch.input_ids,
                &batch.token_type_ids,
                &batch.attention_mask,
                &batch.labels,
            )?;
            if let Some(why) = divergence.observe(loss_value) {
                status = "diverged";
                bar.abandon();
                eprintln!("training diverged at epoch {} step {}: {why}; lower --lr (now {}). Completed epochs are kept in {}", epoch + 1, steps + 1, config.lr, out.display());
                break 'epochs;
            }
            if let Some(r) = &mut reselection {
                r.observe(&grads)?;
            }
            let mut gradients = optimizer.gradients(&grads)?;
            optim::clip_global_norm(&mut gradients, config.max_grad_norm)?;
            let lr = optim::linear_schedule(steps, warmup, total_steps, config.lr);
            optimizer.step(&gradients, lr)?;
            steps += 1;
            if let Some(r) = &mut reselection {
                r.after_step(steps, &mut method, &mut optimizer)?;
            }
            loss_sum += loss_value;
            loss_count += 1;
            if let Some(recorder) = recorder.as_mut().filter(|r| r.due(steps, total_steps)) {
                let loss = loss_sum / loss_count as f64;
                recorder.record(steps, epoch + 1, loss, &method.increments()?)?;
            }
            bar.inc(1);
            bar.set_message(format!(
                "epoch {}/{} loss {:.4}",
                epoch + 1,
                config.epochs,
                loss_sum / loss_count as f64
            ));
            if steps % config.log_every.max(1) == 0 {
                if bar.is_hidden() {
                    // No terminal (a batch job's log): a plain progress line instead of the bar.
                    let done = steps - first_epoch * batches_per_epoch;
                    let per_step = started.elapsed().as_secs_f64() / done.max(1) as f64;
                    eprintln!(
                        "epoch {}/{} step {steps}/{total_steps} loss {:.4} lr {lr:.2e} {per_step:.2} s/step ETA {:.0} s",
                        epoch + 1,
                        config.epochs,
                        loss_sum / loss_count as f64,
                        per_step * (total_steps - steps) as f64
                    );
                }
                rows.push(MetricRow {
                    kind: "step".into(),
                    epoch: epoch + 1,
                    step: steps,
                    train_loss: loss_sum / loss_count as f64,
                    lr,
                    seconds: seconds_before + started.elapsed().as_secs_f64(),
                    trainable_params: trainable,
                    dev_loss: None,
                    dev_metrics: BTreeMap::new(),
                });
            }
        }
        bar.finish_and_clear();

        let classifier = pretrained.build(&method.merged()?)?;
        let (scores, _) = eval::evaluate(&classifier, &dev, 64, &device, false)?;
        if !scores.mean_loss.is_finite() {
            // Not a completed epoch: nothing of it is kept, and the run stops.
            status = "diverged";
            eprintln!("training diverged in epoch {}: the dev loss is {}; lower --lr (now {}). Completed epochs are kept in {}", epoch + 1, scores.mean_loss, config.lr, out.display());
            break 'epochs;
        }
        eprintln!(
            "epoch {}: train loss {:.4}, dev loss {:.4}, {}",
            epoch + 1,
            loss_sum / loss_count.max(1) as f64,
            scores.mean_loss,
            format_metrics(&scores.metrics)
        );
        rows.push(MetricRow {
            kind: "epoch".into(),
            epoch: epoch + 1,
            step: steps,
            train_loss: loss_sum / loss_count.max(1) as f64,
            lr: optim::linear_schedule(steps, warmup, total_steps, config.lr),
            seconds: seconds_before + started.elapsed().as_secs_f64(),
            trainable_params: trainable,
            dev_loss: Some(scores.mean_loss),
            dev_metrics: scores.metrics.clone(),
        });
        epochs.push(EpochResult {
            epoch: epoch + 1,
            dev_loss: scores.mean_loss,
            metrics: scores.metrics,
        });
        let checkpoint = Checkpoint {
            config: config.clone(),
            epochs_completed: epoch + 1,
            steps,
            rows: rows.clone(),
            epochs: epochs.clone(),
            seconds: seconds_before + started.elapsed().as_secs_f64(),
            divergence: divergence.clone(),
        };
        if let Some(r) = &reselection {
            r.save(&state_dir, steps)?;
            r.write_log(&out.join(reselect::SELECTION_FILE))?;
        }
        write_checkpoint(&state_dir, &checkpoint, &method, &optimizer)?;
        if reselection.is_some() {
            reselect::Reselection::prune(&state_dir, steps)?;
        }
        write_metrics(out, &rows, config)?;
    }

    if status == "diverged" && !epochs.is_empty() {
        // The weights after a divergence are garbage: go back to the last completed epoch
        // (and, with reselection, to its mask).
        if reselection.is_some() {
            let targets: Vec<String> = method.selected_indices()?.into_keys().collect();
            method.move_mask(&saved_selection(&state_dir, &targets)?)?;
        }
        restore_values(&method, &state_dir)?;
    }
    // A diverged run with no completed epoch has no increment worth keeping.
    let keep_weights = !(status == "diverged" && epochs.is_empty());
    if let Some(dir) = export_hf.filter(|_| keep_weights) {
        let base = crate::hub::resolve(&config.model)?;
        export_checkpoint(
            &method.merged()?,
            &pretrained,
            base.tokenizer.as_deref(),
            dir,
        )?;
    }
    if finished {
        if let Ok(stored) = read_summary(out) {
            return Ok(TrainReport {
                summary: stored,
                metrics: rows,
            });
        }
    }
    write_metrics(out, &rows, config)?;
    if keep_weights {
        let (tensors, meta) = method.delta_tensors()?;
        output::write_safetensors(&tensors, meta, &out.join(DELTA_FILE))?;
    }
    let best = best_epoch(&epochs, primary);
    let summary = TrainSummary {
        config: config.clone(),
        status: status.into(),
        epochs_completed: epochs.len(),
        steps,
        primary_metric: primary.into(),
        best_epoch: best,
        last_epoch: epochs.last().cloned(),
        trainable_params: trainable,
        optimizer_state_bytes: optimizer.state_bytes(),
        gradient_state_bytes: trainable * 4,
        peak_rss_mib: crate::peak_rss::peak_rss_mib(),
        seconds: seconds_before + started.elapsed().as_secs_f64(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    output::write_json(&summary_path(out), &summary)?;
    if status == "diverged" {
        bail!(
            "training diverged; lower --lr (now {}). {} completed epoch(s) are kept in {}{}",
            config.lr,
            epochs.len(),
            out.display(),
            if keep_weights {
                ""
            } else {
                " (no delta.safetensors: no epoch completed)"
            }
        );
    }
    Ok(TrainReport {
        summary,
        metrics: rows,
    })
}

fn format_metrics(metrics: &BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the method; SIFT selects on the first batches of the first epoch's order at θ1.
/// On resume, the selection comes from the saved state instead.
fn build_method(
    config: &TrainConfig,
    pretrained: &Pretrained,
    train: &Dataset,
    head: &[String],
    state_dir: Option<&Path>,
) -> Result<FineTuning> {
    let targets = select::target_names(&config.modules, &pretrained.config)?;
    let method = match config.method {
        MethodKind::Full | MethodKind::Head => {
            FineTuning::dense(config.method, &pretrained.weights, head)?
        }
        MethodKind::Lora => FineTuning::lora(
            &pretrained.weights,
            head,
            &targets,
            config.lora_rank,
            config.lora_alpha,
            config.seed,
        )?,
        MethodKind::Sift | MethodKind::Random => {
            let selected = match state_dir {
                Some(dir) => saved_selection(dir, &targets)?,
                None => initial_mask(config, pretrained, train, &targets)?,
            };
            FineTuning::sparse(config.method, &pretrained.weights, head, &selected)?
        }
    };
    if let Some(dir) = state_dir {
        restore_values(&method, dir)?;
    }
    Ok(method)
}

/// The mask a sparse run starts from: `--method random` is the random rule whatever
/// `--selector` says; `--method sift` uses its `--selector` (`crate::selectors`).
fn initial_mask(
    config: &TrainConfig,
    pretrained: &Pretrained,
    train: &Dataset,
    targets: &[String],
) -> Result<BTreeMap<String, Vec<u32>>> {
    let rule = match config.method {
        MethodKind::Random => selectors::Selector::Random,
        _ => config.selector.rule,
    };
    selectors::Masks::new(selectors::SelectionInputs {
        pretrained,
        train,
        targets,
        rate: config.rate,
        selection: config.selection,
        batches: config.selection_batches,
        batch_size: config.batch_size,
        seed: config.seed,
        movement_steps: config.selector.movement_steps,
        movement_lr: config.selector.movement_lr,
    })
    .mask(rule)
}

/// G = Σ over the first `selection_batches` training batches of ∂L/∂W at θ1, for each target.
pub fn accumulated_gradients(
    pretrained: &Pretrained,
    train: &Dataset,
    targets: &[String],
    config: &TrainConfig,
) -> Result<BTreeMap<String, Vec<f32>>> {
    let order = BatchOrder::Shuffled {
        seed: config.seed,
        epoch: 0,
    };
    let device = pretrained.device();
    let batches = train
        .batches(config.batch_size, order, &device)
        .take(config.selection_batches)
        .map(|b| b.map_err(anyhow::Error::from));
    GradientSource::frozen(pretrained, &pretrained.weights, targets)?.accumulate(batches)
}

fn write_metrics(out: &Path, rows: &[MetricRow], config: &TrainConfig) -> Result<()> {
    let metric_names: Vec<String> = {
        let mut names: Vec<String> = rows
            .iter()
            .flat_map(|r| r.dev_metrics.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let mut columns = vec![
        output::column_of("kind", rows, |r| r.kind.as_str()),
        output::column_of("epoch", rows, |r| r.epoch as u32),
        output::column_of("step", rows, |r| r.step as u32),
        output::column_of("train_loss", rows, |r| r.train_loss),
        output::column_of("lr", rows, |r| r.lr),
        output::column_of("seconds", rows, |r| r.seconds),
        output::column_of("trainable_params", rows, |r| r.trainable_params as u64),
        output::column_of("dev_loss", rows, |r| r.dev_loss),
    ];
    for name in &metric_names {
        columns.push(Column::new(
            format!("dev_{name}").into(),
            rows.iter()
                .map(|r| r.dev_metrics.get(name).copied())
                .collect::<Vec<_>>(),
        ));
    }
    let mut df = DataFrame::new_infer_height(columns)?;
    output::write_parquet(
        &mut df,
        &out.join("metrics.parquet"),
        &[("train_config".into(), serde_json::to_string(config)?)],
    )
}

/// The increment file of a run directory.
pub const DELTA_FILE: &str = "delta.safetensors";

/// Where a run's outputs live, for callers that want them.
pub fn summary_path(out: &Path) -> PathBuf {
    out.join(output::SUMMARY_FILE)
}

/// A run's summary.json.
pub fn read_summary(out: &Path) -> Result<TrainSummary> {
    let path = summary_path(out);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a train summary", path.display()))
}

/// Refuses an `--export-hf` directory that would overwrite anything: the run directory itself,
/// the model being fine-tuned, or any directory that already holds files. Checked before any
/// work, so a long run never ends in a refusal.
fn check_export_dir(dir: &Path, out: &Path, model: &str) -> Result<()> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(dir, out) {
        bail!(
            "--export-hf {}: is the --out directory; export into a folder of its own, e.g. {}",
            dir.display(),
            out.join("hf").display()
        );
    }
    if same(dir, Path::new(model)) {
        bail!(
            "--export-hf {}: is the --model directory; exporting there would destroy the pretrained model. Choose a new directory",
            dir.display()
        );
    }
    if dir.exists() && !output::is_empty_dir(dir)? {
        bail!(
            "--export-hf {}: already holds files; sift-lab does not overwrite a model. Choose a new (or empty) directory",
            dir.display()
        );
    }
    Ok(())
}

/// Writes the merged model as a transformers checkpoint into `dir`, whole or not at all: the
/// files go to a temporary folder beside it, which is then renamed to `dir` (a rename that
/// fails if `dir` meanwhile holds anything, so nothing is ever overwritten).
fn export_checkpoint(
    weights: &model::WeightMap,
    pretrained: &Pretrained,
    tokenizer: Option<&Path>,
    dir: &Path,
) -> Result<()> {
    let name = dir
        .file_name()
        .with_context(|| format!("--export-hf {}: not a directory name", dir.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".partial-{}", std::process::id()));
    let tmp = dir.with_file_name(tmp_name);
    let _ = std::fs::remove_dir_all(&tmp);
    model::weights::save_hf_checkpoint(
        weights,
        &pretrained.files.config,
        pretrained.num_labels,
        &tmp,
    )?;
    if let Some(tokenizer) = tokenizer {
        std::fs::copy(tokenizer, tmp.join("tokenizer.json"))
            .with_context(|| format!("copying {}", tokenizer.display()))?;
    }
    // rename(2) moves a directory onto a missing or empty one, and fails on one that holds
    // anything, so a directory filled meanwhile (by another run) is never replaced.
    std::fs::rename(&tmp, dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        anyhow::anyhow!(
            "--export-hf {}: cannot move the export into place ({e}); it may have been created meanwhile. Nothing was overwritten",
            dir.display()
        )
    })
}

/// The epoch with the highest primary metric; on a tie the earliest (`max_by` keeps the last of
/// equals, hence the reversed order). Epochs whose primary metric is not a finite number are
/// never the best.
fn best_epoch(epochs: &[EpochResult], primary: &str) -> Option<EpochResult> {
    epochs
        .iter()
        .rev()
        .filter_map(|e| {
            let value = *e.metrics.get(primary)?;
            value.is_finite().then_some((e, value))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(e, _)| e.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_epoch_is_the_highest_and_the_earliest_of_ties() {
        let epoch = |epoch, accuracy| EpochResult {
            epoch,
            dev_loss: 0.5,
            metrics: [("accuracy".to_string(), accuracy)].into(),
        };
        let epochs = [
            epoch(1, 0.70),
            epoch(2, 0.73),
            epoch(3, 0.73),
            epoch(4, 0.71),
        ];
        assert_eq!(best_epoch(&epochs, "accuracy").unwrap().epoch, 2);
        assert_eq!(best_epoch(&epochs[..1], "accuracy").unwrap().epoch, 1);
        assert!(best_epoch(&[], "accuracy").is_none());
        // An epoch without a finite primary metric is never the best.
        let odd = [epoch(1, f64::NAN), epoch(2, 0.5), epoch(3, f64::INFINITY)];
        assert_eq!(best_epoch(&odd, "accuracy").unwrap().epoch, 2);
        assert!(best_epoch(&odd[..1], "accuracy").is_none());
        assert!(best_epoch(&epochs, "f1").is_none());
    }

    #[test]
    fn divergence_needs_a_sustained_blow_up_or_a_non_finite_loss() {
        // Binary task: floor ln 2 = 0.693; first loss 0.5, so the limit is 6.93.
        let mut d = Divergence::new(2);
        assert!(d.observe(0.5).is_none());
        // Two steps above the limit, then one below: the count starts over.
        assert!(d.observe(8.0).is_none());
        assert!(d.observe(1e8).is_none());
        assert!(d.observe(6.9).is_none());
        assert!(d.observe(7.0).is_none());
        assert!(d.observe(7.0).is_none());
        let why = d.observe(1e8).unwrap();
        assert!(why.contains("stayed above 6.9315"), "{why}");
        // The first loss sets the bar when it is above ln C: 10 × 2.0 = 20.
        let mut d = Divergence::new(2);
        d.observe(2.0);
        for _ in 0..5 {
            assert!(d.observe(19.0).is_none());
        }
        // Regression (C = 1, floor 0): 10 × the first loss.
        let mut d = Divergence::new(1);
        d.observe(0.1);
        d.observe(1.01);
        d.observe(1.01);
        assert!(d.observe(1.01).is_some());
        // A non-finite loss stops at once, even the first.
        assert!(Divergence::new(2).observe(f64::NAN).is_some());
        assert!(Divergence::default().observe(f64::INFINITY).is_some());
    }
}
