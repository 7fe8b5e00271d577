//! `sift-lab eval --mmlu DIR`: zero-shot MMLU accuracy of a decoder. Each question's prompt
//! (`data::mmlu::Question::prompt`) ends in "Answer:"; the prediction is the letter whose token
//! (" A", " B", " C", " D") has the highest next-token log-probability. Accuracy per subject,
//! over all questions, and the mean over subjects; per-question predictions as Parquet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use polars::prelude::{Column, DataFrame};
use serde::Serialize;

use crate::data::mmlu::{self, Question, LETTERS};
use crate::model::decoder::{load_decoder, Decoder};
use crate::model::llama::Llama;
use crate::model::Mode;
use crate::{output, progress};

#[derive(Debug, Clone, Serialize)]
pub struct MmluConfig {
    /// A GGUF file, a transformers directory, or a Hub id in the cache.
    pub model: String,
    /// Folder of SUBJECT_SPLIT.csv files, or holding SPLIT/ folders of them.
    pub dir: PathBuf,
    /// test, dev or val: which files of `dir`.
    pub split: String,
    /// Only the first N questions of each subject.
    pub limit: Option<usize>,
    pub batch_size: usize,
}

#[derive(Debug, Clone, Default)]
pub struct MmluOptions {
    pub predictions: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubjectScore {
    pub subject: String,
    pub questions: usize,
    pub correct: usize,
    pub accuracy: f64,
}

/// One question's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub subject: String,
    pub file: String,
    pub line: u64,
    pub answer: usize,
    pub prediction: usize,
    /// log p(letter | prompt) for A, B, C, D.
    pub log_probs: [f32; 4],
}

#[derive(Debug, Clone, Serialize)]
pub struct MmluReport {
    pub model: String,
    pub split: String,
    pub questions: usize,
    /// Over all questions.
    pub accuracy: f64,
    /// The mean of the subjects' accuracies.
    pub mean_subject_accuracy: f64,
    pub subjects: Vec<SubjectScore>,
    pub seconds: f64,
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

/// The token id of each answer letter as it follows "Answer:" (" A" ... " D"), which must be
/// one token each.
pub fn letter_ids(decoder: &Decoder) -> Result<[u32; 4]> {
    let mut ids = [0u32; 4];
    for (slot, letter) in ids.iter_mut().zip(LETTERS) {
        let text = format!(" {letter}");
        let encoding = decoder
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| anyhow::anyhow!("tokenizing {text:?}: {e}"))?;
        match encoding.get_ids() {
            [one] => *slot = *one,
            other => bail!(
                "the tokenizer of {} splits {text:?} into {} tokens; MMLU scoring needs one token per answer letter",
                decoder.name,
                other.len()
            ),
        }
    }
    Ok(ids)
}

/// Scores `questions` with `model`, `batch_size` prompts at a time (sorted by length, so that a
/// batch pads little).
pub fn score(
    model: &Llama,
    decoder: &Decoder,
    questions: &[Question],
    batch_size: usize,
    show_progress: bool,
) -> Result<Vec<Prediction>> {
    let letters = letter_ids(decoder)?;
    let letters_t = Tensor::new(&letters, &Device::Cpu)?;
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| decoder.encode(&q.prompt()))
        .collect::<Result<_>>()?;
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let pad = decoder.config.eos_token_id.unwrap_or(0);
    let bar = show_progress.then(|| progress::bar(questions.len() as u64, "questions"));
    let mut log_probs = vec![[0f32; 4]; questions.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let longest = chunk.iter().map(|&i| prompts[i].len()).max().unwrap_or(0);
        if longest > decoder.config.max_position_embeddings {
            let i = chunk
                .iter()
                .copied()
                .max_by_key(|&i| prompts[i].len())
                .unwrap();
            bail!(
                "{}:{}: the prompt has {} tokens, more than the model's {} positions",
                questions[i].file.display(),
                questions[i].line,
                prompts[i].len(),
                decoder.config.max_position_embeddings
            );
        }
        let mut ids = Vec::with_capacity(chunk.len() * longest);
        let mut last = Vec::with_capacity(chunk.len());
        for &i in chunk {
            ids.extend_from_slice(&prompts[i]);
            ids.extend(std::iter::repeat_n(pad, longest - prompts[i].len()));
            last.push(prompts[i].len() - 1);
        }
        let ids = Tensor::from_vec(ids, (chunk.len(), longest), &Device::Cpu)?;
        let logits = model.forward_at(&ids, &last, Mode::Inference)?;
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?
            .index_select(&letters_t, 1)?
            .to_vec2::<f32>()?;
        for (&i, row) in chunk.iter().zip(lp) {
            log_probs[i] = [row[0], row[1], row[2], row[3]];
        }
        if let Some(bar) = &bar {
            bar.inc(chunk.len() as u64);
        }
        if progress::interrupted() {
            bail!("interrupted");
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(questions
        .iter()
        .zip(log_probs)
        .map(|(q, lp)| Prediction {
            subject: q.subject.clone(),
            file: q.file.display().to_string(),
            line: q.line,
            answer: q.answer,
            prediction: (0..4)
                .max_by(|&a, &b| lp[a].total_cmp(&lp[b]).then(b.cmp(&a)))
                .unwrap(),
            log_probs: lp,
        })
        .collect())
}

/// Accuracy per subject (sorted by name), overall, and the mean over subjects.
pub fn summarize(predictions: &[Prediction]) -> Result<(Vec<SubjectScore>, f64, f64)> {
    if predictions.is_empty() {
        bail!("no MMLU questions to score");
    }
    let mut by_subject: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for p in predictions {
        let entry = by_subject.entry(&p.subject).or_default();
        entry.0 += 1;
        entry.1 += usize::from(p.prediction == p.answer);
    }
    let subjects: Vec<SubjectScore> = by_subject
        .into_iter()
        .map(|(subject, (n, correct))| SubjectScore {
            subject: subject.to_string(),
            questions: n,
            correct,
            accuracy: correct as f64 / n as f64,
        })
        .collect();
    let correct: usize = subjects.iter().map(|s| s.correct).sum();
    let overall = correct as f64 / predictions.len() as f64;
    let mean = subjects.iter().map(|s| s.accuracy).sum::<f64>() / subjects.len() as f64;
    Ok((subjects, overall, mean))
}

/// The questions of `config`: every file of the split, the first `limit` of each subject.
pub fn questions(config: &MmluConfig) -> Result<Vec<Question>> {
    let mut questions = Vec::new();
    for file in mmlu::files(&config.dir, &config.split)? {
        let mut qs = mmlu::read_csv(&file)?;
        if let Some(limit) = config.limit {
            qs.truncate(limit);
        }
        questions.extend(qs);
    }
    Ok(questions)
}

/// `sift-lab eval --mmlu DIR`.
pub fn run(config: &MmluConfig, options: &MmluOptions) -> Result<MmluReport> {
    let start = Instant::now();
    if config.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let questions = questions(config)?;
    let decoder = load_decoder(&config.model, &Device::Cpu)?;
    let model = decoder.build()?;
    let predictions = score(
        &model,
        &decoder,
        &questions,
        config.batch_size,
        options.progress,
    )?;
    let (subjects, accuracy, mean_subject_accuracy) = summarize(&predictions)?;
    let report = MmluReport {
        model: config.model.clone(),
        split: config.split.clone(),
        questions: predictions.len(),
        accuracy,
        mean_subject_accuracy,
        subjects,
        seconds: start.elapsed().as_secs_f64(),
        predictions,
    };
    if let Some(path) = &options.predictions {
        write_predictions(path, &report)?;
    }
    Ok(report)
}

/// One row per question: subject, file, line, answer, prediction (letters), correct,
/// log_prob_A..D; the report in the file's metadata.
pub fn write_predictions(path: &Path, report: &MmluReport) -> Result<()> {
    let p = &report.predictions;
    let letter = |i: usize| LETTERS[i].to_string();
    let mut columns = vec![
        output::column_of("subject", p, |x| x.subject.clone()),
        output::column_of("file", p, |x| x.file.clone()),
        output::column_of("line", p, |x| x.line),
        output::column_of("answer", p, |x| letter(x.answer)),
        output::column_of("prediction", p, |x| letter(x.prediction)),
        output::column_of("correct", p, |x| x.prediction == x.answer),
    ];
    for (j, l) in LETTERS.iter().enumerate() {
        columns.push(Column::new(
            format!("log_prob_{l}").into(),
            p.iter().map(|x| x.log_probs[j]).collect::<Vec<_>>(),
        ));
    }
    let mut frame = DataFrame::new_infer_height(columns)?;
    let metadata = vec![("mmlu_report".to_string(), serde_json::to_string(report)?)];
    output::write_parquet(&mut frame, path, &metadata)
        .with_context(|| format!("writing {}", path.display()))
}

impl MmluReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} on MMLU {} ({} questions, {:.1} s)\n",
            self.model, self.split, self.questions, self.seconds
        );
        for s in &self.subjects {
            out += &format!(
                "  {:<28} {:>6.2} %  ({}/{})\n",
                s.subject,
                100.0 * s.accuracy,
                s.correct,
                s.questions
            );
        }
        out += &format!(
            "  {:<28} {:>6.2} %  (mean over subjects {:.2} %)\n",
            "all questions",
            100.0 * self.accuracy,
            100.0 * self.mean_subject_accuracy
        );
        out
    }
}
