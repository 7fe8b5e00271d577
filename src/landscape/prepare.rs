//! Loading what a landscape evaluates: θ1 (or checkpoints A and B), optionally with a trained
//! head (`--head-from`), the evaluation set and the directions; and evaluating one point.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use candle_core::Device;

use super::config::{Directions, LandscapeConfig, Point};
use super::directions::{prepare_surface, Surface};
use super::rows::Row;
use crate::data::Dataset;
use crate::model::{self, Pretrained};
use crate::{eval, hub, metrics};

/// The model, the evaluation set and the directions of a configuration.
pub struct Prepared {
    pub config: LandscapeConfig,
    /// θ1 (or checkpoint B): its config, head and tokenizer serve every point.
    pub theta1: Pretrained,
    pub dataset: Dataset,
    pub surface: Surface,
    pub device: Device,
}

/// Replaces θ1's head (pooler + classifier) by the trained one in checkpoint `dir`. θ0 shares
/// every head tensor θ1 does not have pretrained (so the classifier stays fixed over the grid).
fn use_trained_head(
    theta1: &mut Pretrained,
    dir: &Path,
    config: &LandscapeConfig,
    device: &Device,
) -> Result<()> {
    let trained = model::load_pretrained(
        &config.model,
        Some(dir),
        theta1.num_labels,
        config.seed,
        device,
    )
    .with_context(|| format!("--head-from {}", dir.display()))?;
    for name in crate::model::weights::head_names(&theta1.config, theta1.num_labels)? {
        ensure!(
            !trained.seeded_head.contains(&name),
            "--head-from {}: the checkpoint has no trained {name}; give the --export-hf directory \
             of a `sift-lab train` run on this task",
            dir.display()
        );
        theta1
            .weights
            .insert(name.clone(), trained.weights[&name].clone());
    }
    Ok(())
}

/// Resolves the model revision into `config` (so a changed snapshot is a changed config).
pub fn resolve_revision(config: &mut LandscapeConfig) -> Result<()> {
    config.model_revision = hub::resolve(&config.model)?.revision;
    Ok(())
}

/// Loads the model(s) and the evaluation set and builds the directions.
pub fn prepare(config: &LandscapeConfig) -> Result<Prepared> {
    config.validate()?;
    let task = config.task;
    let device = Device::Cpu;
    let num_labels = task.num_labels();
    let (theta1, start) = match config.directions {
        Directions::Checkpoints => {
            let a = model::load_pretrained(
                &config.model,
                config.from_checkpoint.as_deref(),
                num_labels,
                config.seed,
                &device,
            )
            .context("--from-checkpoint")?;
            let b = model::load_pretrained(
                &config.model,
                config.to_checkpoint.as_deref(),
                num_labels,
                config.seed,
                &device,
            )
            .context("--to-checkpoint")?;
            ensure!(
                a.config.hidden_size == b.config.hidden_size
                    && a.config.num_hidden_layers == b.config.num_hidden_layers,
                "--from-checkpoint and --to-checkpoint are different architectures"
            );
            (b, Some(a))
        }
        Directions::Pca => {
            // The weights the run started from: its θ1 and the head drawn from its seed.
            let run = config
                .pca_run
                .as_deref()
                .context("--directions pca needs a run")?;
            let summary = super::trajectory::run_summary(run, config)?;
            let theta1 = model::load_pretrained(
                &config.model,
                None,
                num_labels,
                summary.config.seed,
                &device,
            )?;
            (theta1, None)
        }
        _ => {
            let mut theta1 =
                model::load_pretrained(&config.model, None, num_labels, config.seed, &device)?;
            if let Some(dir) = &config.head_from {
                use_trained_head(&mut theta1, dir, config, &device)?;
            }
            (theta1, None)
        }
    };
    theta1.check_max_len(config.max_len)?;
    let surface = prepare_surface(config, &theta1, start.as_ref())?;
    let dataset = Dataset::load(
        &config.data_dir,
        task,
        config.split,
        &theta1.tokenizer,
        config.max_len,
        Some(config.eval_examples),
    )?;
    ensure!(
        !dataset.is_empty(),
        "{} {}: no examples",
        task.name(),
        config.split
    );
    Ok(Prepared {
        config: config.clone(),
        theta1,
        dataset,
        surface,
        device,
    })
}

impl Prepared {
    /// Loss and metrics at one point, with the evaluation loop of `sift-lab eval`.
    pub fn evaluate(&self, point: &Point) -> Result<Row> {
        let start = Instant::now();
        let weights = self.surface.weights_at(point.alpha, point.beta)?;
        let classifier = self.theta1.build(&weights)?;
        let (scores, _) = eval::evaluate(
            &classifier,
            &self.dataset,
            self.config.batch_size,
            &self.device,
            false,
        )?;
        let primary = metrics::primary_metric(self.dataset.task);
        Ok(Row {
            point: point.index,
            alpha_index: point.alpha_index,
            beta_index: point.beta_index,
            alpha: point.alpha,
            beta: point.beta,
            loss: scores.mean_loss,
            metric: scores.metrics.get(primary).copied().unwrap_or(f64::NAN),
            metrics: scores.metrics,
            n_examples: scores.n_examples,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
