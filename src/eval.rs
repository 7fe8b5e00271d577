//! `sift-lab eval`: mean loss and task metrics of a model on a GLUE split, and per-example
//! predictions. [`evaluate`] is the one evaluation loop every other command reuses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use polars::prelude::{Column, DataFrame};
use serde::Serialize;

use crate::backprop;
use crate::data::{BatchOrder, Dataset, Label, Split, Task};
use crate::model::{self, SequenceClassifier};
use crate::run_lock::RunLock;
use crate::{metrics, output};

#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub model: String,
    pub checkpoint: Option<PathBuf>,
    pub task: Task,
    pub data_dir: PathBuf,
    pub split: Split,
    pub limit: Option<usize>,
    pub batch_size: usize,
    pub max_len: usize,
    /// Seed of the task head when the checkpoint has none.
    pub seed: u64,
}

/// Loss and metrics over a set of examples.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub n_examples: usize,
    pub mean_loss: f64,
    pub metrics: BTreeMap<String, f64>,
}

/// Where `sift-lab eval` writes and how it shows progress; nothing here changes a number.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Write the per-example predictions to this Parquet file.
    pub predictions: Option<PathBuf>,
    pub progress: bool,
}

/// What an evaluation returns: the scores, and the per-example predictions behind them.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub checkpoint: Option<String>,
    pub task: String,
    pub split: String,
    #[serde(flatten)]
    pub scores: Scores,
    pub seconds: f64,
    #[serde(skip)]
    pub predictions: Predictions,
}

/// Per-example outputs, in dataset order.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    pub example_index: Vec<u32>,
    /// 1-based line of the example in its TSV file.
    pub line: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
    pub loss: Vec<f32>,
    pub labels: Vec<Label>,
}

impl Predictions {
    /// Argmax class, or the regression output.
    pub fn prediction(&self, i: usize) -> f32 {
        let row = &self.logits[i];
        if row.len() == 1 {
            row[0]
        } else {
            argmax(row) as f32
        }
    }

    /// One row per example: index, line, logit_0.., prediction, label, loss.
    pub fn to_frame(&self) -> Result<DataFrame> {
        let n_out = self.logits.first().map_or(0, |r| r.len());
        let mut columns: Vec<Column> = vec![
            Column::new("example_index".into(), &self.example_index),
            Column::new("line".into(), &self.line),
        ];
        for j in 0..n_out {
            let values: Vec<f32> = self.logits.iter().map(|r| r[j]).collect();
            columns.push(Column::new(format!("logit_{j}").into(), values));
        }
        let predictions: Vec<f32> = (0..self.logits.len()).map(|i| self.prediction(i)).collect();
        let labels: Vec<f32> = self.labels.iter().map(label_value).collect();
        if n_out == 1 {
            columns.push(Column::new("prediction".into(), predictions));
            columns.push(Column::new("label".into(), labels));
        } else {
            let as_u32 = |v: Vec<f32>| v.into_iter().map(|x| x as u32).collect::<Vec<u32>>();
            columns.push(Column::new("prediction".into(), as_u32(predictions)));
            columns.push(Column::new("label".into(), as_u32(labels)));
        }
        columns.push(Column::new("loss".into(), &self.loss));
        Ok(DataFrame::new_infer_height(columns)?)
    }
}

fn label_value(label: &Label) -> f32 {
    match label {
        Label::Class(c) => *c as f32,
        Label::Score(s) => *s,
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// Runs `classifier` over `dataset` in order (inference kernels), returning the mean loss, the
/// task metrics and every example's outputs.
pub fn evaluate(
    classifier: &SequenceClassifier,
    dataset: &Dataset,
    batch_size: usize,
    device: &Device,
    progress: bool,
) -> Result<(Scores, Predictions)> {
    anyhow::ensure!(batch_size > 0, "--batch-size must be at least 1");
    // A metric of no examples is not a number.
    anyhow::ensure!(!dataset.is_empty(), "no examples to evaluate");
    let n_batches = dataset.len().div_ceil(batch_size);
    let bar = if progress {
        crate::progress::bar(n_batches as u64, "batches")
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message("eval");
    let mut predictions = Predictions::default();
    for batch in dataset.batches(batch_size, BatchOrder::Sequential, device) {
        let batch = batch?;
        let logits = backprop::logits(
            classifier,
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
        )?;
        let losses = model::per_example_loss(&logits, &batch.labels)?;
        predictions
            .logits
            .extend(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?);
        predictions
            .loss
            .extend(losses.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        for &i in &batch.example_indices {
            predictions.example_index.push(i as u32);
            predictions.line.push(dataset.examples[i].line as u32);
            predictions.labels.push(dataset.examples[i].label);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = predictions.loss.len();
    let mean_loss = predictions.loss.iter().map(|&l| l as f64).sum::<f64>() / n.max(1) as f64;
    let metrics = metrics::task_metrics(dataset.task, &predictions.logits, &predictions.labels)?;
    Ok((
        Scores {
            n_examples: n,
            mean_loss,
            metrics,
        },
        predictions,
    ))
}

/// The metadata key of the report in a predictions file.
pub const REPORT_KEY: &str = "eval_report";

/// Writes per-example predictions to `path` (Parquet, atomically), the report in its metadata.
pub fn write_predictions(path: &Path, report: &EvalReport) -> Result<()> {
    let metadata = vec![(REPORT_KEY.to_string(), serde_json::to_string(report)?)];
    output::write_parquet(&mut report.predictions.to_frame()?, path, &metadata)
}

/// `sift-lab eval`: loads the model (and checkpoint), evaluates it on the split, and writes
/// the predictions file when `options` asks for one.
pub fn run(config: &EvalConfig, options: &EvalOptions) -> Result<EvalReport> {
    let start = Instant::now();
    anyhow::ensure!(config.batch_size > 0, "--batch-size 0: must be at least 1");
    if config.limit == Some(0) {
        anyhow::bail!("--limit 0: keeps no examples, and a metric of no examples is not a number; give at least 1 (or leave it out for all)");
    }
    // The predictions file: one writer, and never over an earlier one. Checked before any work.
    let _lock = match &options.predictions {
        Some(path) => {
            let lock = RunLock::file(path)?;
            output::ensure_absent(
                std::slice::from_ref(path),
                "choose another --predictions file, or remove this one",
            )?;
            Some(lock)
        }
        None => None,
    };
    let device = Device::Cpu;
    let pretrained = model::load_pretrained(
        &config.model,
        config.checkpoint.as_deref(),
        config.task.num_labels(),
        config.seed,
        &device,
    )?;
    pretrained.check_max_len(config.max_len)?;
    let dataset = Dataset::load(
        &config.data_dir,
        config.task,
        config.split,
        &pretrained.tokenizer,
        config.max_len,
        config.limit,
    )?;
    let classifier = pretrained.build(&pretrained.weights)?;
    let (scores, predictions) = evaluate(
        &classifier,
        &dataset,
        config.batch_size,
        &device,
        options.progress,
    )?;
    let report = EvalReport {
        model: config.model.clone(),
        checkpoint: config.checkpoint.as_ref().map(|p| p.display().to_string()),
        task: config.task.name().to_string(),
        split: config.split.name().to_string(),
        scores,
        seconds: start.elapsed().as_secs_f64(),
        predictions,
    };
    if let Some(path) = &options.predictions {
        write_predictions(path, &report)?;
    }
    Ok(report)
}
