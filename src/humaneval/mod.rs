//! `sift-lab eval --humaneval`: functional correctness of a decoder's Python completions on
//! HumanEval (Chen et al. 2021). For each problem, `samples` completions are generated with the
//! KV cache (`generate.rs`: greedy when samples = 1 and temperature = 0, else temperature with
//! top-p from a seed per sample), each is run against the problem's tests in a sandboxed
//! `python3` (`execute.rs`), and pass@k is the unbiased estimator of the Codex paper
//! (`pass_at_k.rs`).
//!
//! Two prompt styles: `completion` feeds the raw HumanEval prompt (signature + docstring), stops
//! at the Codex stop sequences and keeps the text before the first; `chat` wraps the prompt in
//! the model's ChatML chat template with a request to complete the function, stops at the end of
//! the assistant's turn (or the end of its first code block) and takes the code of its first
//! fenced block (a whole function overrides the prompt's stub; a bare body is indented into it).
//!
//! `--out` holds `samples.parquet` (one row per finished sample, rewritten after each, with the
//! settings in its metadata, so that `--resume` skips what is done and refuses other settings)
//! and `summary.json`.

pub mod execute;
pub mod pass_at_k;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};

use crate::data::humaneval::{self, Problem};
use crate::generate::{generate, Decoding};
use crate::model::decoder::{load_decoder, Decoder};
use crate::run_lock::RunLock;
use crate::{output, progress};

use execute::{Outcome, Sandbox};

/// Codex's stop sequences: the text after a completed function body.
pub const STOP_SEQUENCES: [&str; 5] = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"];

/// The samples table and the summary in `--out`.
pub const SAMPLES_FILE: &str = "samples.parquet";
const CONFIG_KEY: &str = "humaneval_config";

/// How a problem is put to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PromptStyle {
    /// The raw HumanEval prompt; the model continues the function (the standard protocol).
    Completion,
    /// The prompt inside the model's chat template, asking for the completed function.
    Chat,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HumanEvalConfig {
    /// A GGUF file, a transformers directory, or a Hub id in the cache.
    pub model: String,
    /// The HumanEval .jsonl or .jsonl.gz file.
    pub problems: PathBuf,
    pub prompt: PromptStyle,
    /// Completions per problem.
    pub samples: usize,
    /// 0 with one sample: greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// Wall-clock (and CPU) limit of one test program.
    pub timeout_seconds: f64,
    /// Only the first N problems (not compared on `--resume`: a run can be extended).
    pub limit: Option<usize>,
    pub seed: u64,
}

impl HumanEvalConfig {
    pub fn greedy(&self) -> bool {
        self.temperature == 0.0
    }

    pub fn validate(&self) -> Result<()> {
        if self.samples == 0 {
            bail!("--samples must be at least 1");
        }
        if self.max_new_tokens == 0 {
            bail!("--max-new-tokens must be at least 1");
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "--temperature {}: must be 0 (greedy) or positive",
                self.temperature
            );
        }
        if self.greedy() && self.samples > 1 {
            bail!(
                "--samples {} with --temperature 0: greedy decoding gives the same completion every time; pass a --temperature (0.2 or 0.8 are usual) or --samples 1",
                self.samples
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p {}: must be in (0, 1]", self.top_p);
        }
        if !(self.timeout_seconds > 0.0 && self.timeout_seconds.is_finite()) {
            bail!(
                "--timeout {}: must be a positive number of seconds",
                self.timeout_seconds
            );
        }
        if self.limit == Some(0) {
            bail!("--limit 0: evaluate at least one problem");
        }
        Ok(())
    }

    /// How sample `sample` of problem `problem` is decoded: its own seed, so that a sample is
    /// the same whatever ran before it (resume, --limit).
    pub fn decoding(&self, problem: usize, sample: usize) -> Decoding {
        if self.greedy() {
            return Decoding::Greedy;
        }
        Decoding::Sample {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(((problem as u64) << 24) | sample as u64),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct HumanEvalOptions {
    pub out: PathBuf,
    /// Continue the run in `out`, skipping its finished samples.
    pub resume: bool,
    pub progress: bool,
}

/// One finished sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    pub task_id: String,
    pub sample: u32,
    /// What the program was run with: the prompt + this.
    pub completion: String,
    /// The decoded new tokens before truncation or extraction.
    pub generation: String,
    pub outcome: Outcome,
    pub error: String,
    /// New tokens generated.
    pub tokens: u32,
    /// Generation time.
    pub seconds: f64,
    /// Test time.
    pub exec_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HumanEvalReport {
    pub config: HumanEvalConfig,
    /// "completed" or "interrupted".
    pub status: String,
    pub problems: usize,
    pub samples: usize,
    pub passed: usize,
    pub failed: usize,
    pub timed_out: usize,
    /// Samples whose completion is empty (or only whitespace).
    pub empty_completions: usize,
    /// Problems with at least one passing sample.
    pub problems_solved: usize,
    /// pass@k for k = 1, 10, 100, ... up to --samples (mean over problems).
    pub pass_at_k: BTreeMap<String, f64>,
    /// Per problem: task_id → passing samples of how many.
    pub per_problem: BTreeMap<String, (usize, usize)>,
    pub new_tokens: u64,
    /// Summed over all samples (including those of earlier sessions on --resume).
    pub generation_seconds: f64,
    pub execution_seconds: f64,
    pub tokens_per_second: f64,
    /// Samples computed by this invocation, and read back from an earlier one.
    pub computed_now: usize,
    pub resumed: usize,
    pub sandbox: Sandbox,
    /// Wall time, summed over the sessions of a resumed run.
    pub seconds: f64,
    pub version: String,
}

/// The chat template's rendering of one user turn, ready for the assistant's reply. SmolLM2 (and
/// other ChatML models) mark turns with `<|im_start|>` / `<|im_end|>`; without a system turn,
/// SmolLM2's template inserts its default system prompt, which is kept here.
pub fn chat_prompt(decoder: &Decoder, problem: &Problem) -> Result<String> {
    for token in ["<|im_start|>", "<|im_end|>"] {
        if decoder.tokenizer.token_to_id(token).is_none() {
            bail!(
                "--prompt chat: the tokenizer of {} has no {token} token; only ChatML chat templates (SmolLM2 and the like) are supported; use --prompt completion",
                decoder.name
            );
        }
    }
    let request = format!(
        "Complete the following Python function. Reply with the whole function in one ```python code block.\n\n```python\n{}```",
        problem.prompt
    );
    Ok(format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{request}<|im_end|>\n<|im_start|>assistant\n"
    ))
}

/// The completion before the first Codex stop sequence.
pub fn truncate_at_stop(text: &str) -> &str {
    let cut = STOP_SEQUENCES
        .iter()
        .filter_map(|s| text.find(s))
        .min()
        .unwrap_or(text.len());
    &text[..cut]
}

/// The code of the first fenced block of `text` (```python, ```py or plain ```; an unclosed one
/// runs to the end), or `None` when there is no fence.
pub fn fenced_code(text: &str) -> Option<&str> {
    let open = text.find("```")?;
    let after = &text[open + 3..];
    // The info string (python, py, ...) runs to the end of the fence's line.
    let start = after.find('\n').map(|i| i + 1).unwrap_or(after.len());
    let body = &after[start..];
    Some(match body.find("```") {
        Some(end) => &body[..end],
        None => body,
    })
}

/// Whether a chat reply is complete: its first code block has closed.
fn chat_block_closed(text: &str) -> bool {
    text.find("```")
        .is_some_and(|open| text[open + 3..].contains("```"))
}

/// The completion a chat reply gives for `problem`: the code of its first fenced block (or the
/// whole reply without one). A reply that defines the entry point is a whole function (with its
/// imports): it goes after the prompt, whose stub it replaces. Anything else is taken for the
/// body and indented under the prompt's signature when it is not already.
pub fn chat_completion(reply: &str, problem: &Problem) -> String {
    let code = fenced_code(reply).unwrap_or(reply);
    let signature = format!("def {}(", problem.entry_point);
    if code.lines().any(|l| l.trim_start().starts_with(&signature)) {
        return format!("\n{}\n", code.trim_end());
    }
    let indented = code
        .lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.starts_with([' ', '\t']));
    if indented {
        format!("{}\n", code.trim_end())
    } else {
        code.lines()
            .map(|l| {
                if l.trim().is_empty() {
                    String::new()
                } else {
                    format!("    {l}\n")
                }
            })
            .collect()
    }
}

/// `sift-lab eval --humaneval`.
pub fn run(config: &HumanEvalConfig, options: &HumanEvalOptions) -> Result<HumanEvalReport> {
    let started = Instant::now();
    config.validate()?;
    let out = options.out.as_path();
    let _lock = RunLock::dir(out)?;
    let samples_path = out.join(SAMPLES_FILE);
    let summary_path = out.join(output::SUMMARY_FILE);
    let mut rows = if options.resume {
        match samples_path.exists() {
            true => read_samples(&samples_path, config)?,
            false => Vec::new(),
        }
    } else {
        output::ensure_absent(
            &[samples_path.clone(), summary_path.clone()],
            "pass --resume to continue that run, or choose another --out",
        )?;
        Vec::new()
    };
    let mut problems = humaneval::load(&config.problems)?;
    if let Some(limit) = config.limit {
        problems.truncate(limit);
    }
    let sandbox = execute::sandbox()?;
    if !sandbox.network_isolated {
        eprintln!("warning: `unshare -rn` does not work on this machine; test programs run with the network reachable");
    }
    let planned: HashSet<(String, u32)> = problems
        .iter()
        .flat_map(|p| (0..config.samples as u32).map(|s| (p.task_id.clone(), s)))
        .collect();
    let done: HashSet<(String, u32)> = rows.iter().map(|r| (r.task_id.clone(), r.sample)).collect();
    let todo: Vec<(usize, u32)> = problems
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            (0..config.samples as u32)
                .filter(|&s| !done.contains(&(p.task_id.clone(), s)))
                .map(move |s| (i, s))
        })
        .collect();
    let resumed = planned.iter().filter(|k| done.contains(*k)).count();
    if resumed > 0 {
        eprintln!(
            "resuming {}: {resumed} of {} samples already done",
            out.display(),
            planned.len()
        );
    }

    let mut status = "completed";
    let mut computed_now = 0;
    if !todo.is_empty() {
        let decoder = load_decoder(&config.model, &Device::Cpu)?;
        let model = decoder.build()?;
        let eos = match config.prompt {
            PromptStyle::Completion => decoder.config.eos_token_id,
            PromptStyle::Chat => decoder.tokenizer.token_to_id("<|im_end|>"),
        };
        let order: HashMap<&str, usize> = problems
            .iter()
            .enumerate()
            .map(|(i, p)| (p.task_id.as_str(), i))
            .collect();
        let bar = options
            .progress
            .then(|| progress::bar(planned.len() as u64, "samples"));
        if let Some(bar) = &bar {
            bar.set_position(resumed as u64);
            bar.reset_eta();
        }
        let timeout = Duration::from_secs_f64(config.timeout_seconds);
        let mut prompt_cache: Option<(usize, Vec<u32>)> = None;
        for (index, sample) in todo {
            if progress::interrupted() {
                status = "interrupted";
                break;
            }
            let problem = &problems[index];
            let prompt = match &prompt_cache {
                Some((i, ids)) if *i == index => ids.clone(),
                _ => {
                    let text = match config.prompt {
                        PromptStyle::Completion => problem.prompt.clone(),
                        PromptStyle::Chat => chat_prompt(&decoder, problem)?,
                    };
                    let ids = decoder.encode(&text)?;
                    let positions = decoder.config.max_position_embeddings;
                    if ids.len() + config.max_new_tokens > positions {
                        bail!(
                            "{}:{} ({}): the prompt's {} tokens + --max-new-tokens {} exceed the model's {positions} positions; lower --max-new-tokens",
                            config.problems.display(),
                            problem.line,
                            problem.task_id,
                            ids.len(),
                            config.max_new_tokens
                        );
                    }
                    prompt_cache = Some((index, ids.clone()));
                    ids
                }
            };
            let decode =
                |ids: &[u32]| -> String { decoder.tokenizer.decode(ids, true).unwrap_or_default() };
            let generation_started = Instant::now();
            let ids = generate(
                &model,
                &prompt,
                config.max_new_tokens,
                eos,
                config.decoding(index, sample as usize),
                |ids| {
                    let text = decode(ids);
                    match config.prompt {
                        PromptStyle::Completion => STOP_SEQUENCES.iter().any(|s| text.contains(s)),
                        PromptStyle::Chat => chat_block_closed(&text),
                    }
                },
            )?;
            let seconds = generation_started.elapsed().as_secs_f64();
            let generation = decode(&ids);
            let completion = match config.prompt {
                PromptStyle::Completion => truncate_at_stop(&generation).to_string(),
                PromptStyle::Chat => chat_completion(&generation, problem),
            };
            let execution = execute::check(problem, &completion, timeout)?;
            rows.push(SampleRow {
                task_id: problem.task_id.clone(),
                sample,
                completion,
                generation,
                outcome: execution.outcome,
                error: execution.error,
                tokens: ids.len() as u32,
                seconds,
                exec_seconds: execution.seconds,
            });
            computed_now += 1;
            rows.sort_by_key(|r| {
                (
                    order.get(r.task_id.as_str()).copied().unwrap_or(usize::MAX),
                    r.sample,
                )
            });
            write_samples(&samples_path, &rows, config)?;
            if let Some(bar) = &bar {
                bar.inc(1);
                let passed = rows.iter().filter(|r| r.outcome == Outcome::Passed).count();
                bar.set_message(format!("{passed}/{} passed", rows.len()));
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
    let mut report = summarize(
        config,
        &rows,
        &planned,
        status,
        computed_now,
        resumed,
        sandbox,
        started,
    );
    // On --resume the wall time adds up over sessions; a finished run resumed is left as it was.
    let earlier: Option<serde_json::Value> = match options.resume && summary_path.exists() {
        true => std::fs::read_to_string(&summary_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok()),
        false => None,
    };
    if let Some(earlier) = &earlier {
        report.seconds += earlier["seconds"].as_f64().unwrap_or(0.0);
        if computed_now == 0 && earlier["status"] == report.status.as_str() {
            return Ok(report);
        }
    }
    output::write_json(&summary_path, &report)?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    config: &HumanEvalConfig,
    rows: &[SampleRow],
    planned: &HashSet<(String, u32)>,
    status: &str,
    computed_now: usize,
    resumed: usize,
    sandbox: &Sandbox,
    started: Instant,
) -> HumanEvalReport {
    let rows: Vec<&SampleRow> = rows
        .iter()
        .filter(|r| planned.contains(&(r.task_id.clone(), r.sample)))
        .collect();
    let mut per_problem: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &rows {
        let entry = per_problem.entry(r.task_id.clone()).or_default();
        entry.0 += usize::from(r.outcome == Outcome::Passed);
        entry.1 += 1;
    }
    let counts: Vec<(usize, usize)> = per_problem.values().map(|&(c, n)| (n, c)).collect();
    let count = |o: Outcome| rows.iter().filter(|r| r.outcome == o).count();
    let new_tokens: u64 = rows.iter().map(|r| r.tokens as u64).sum();
    let generation_seconds: f64 = rows.iter().map(|r| r.seconds).sum();
    HumanEvalReport {
        config: config.clone(),
        status: status.into(),
        problems: per_problem.len(),
        samples: rows.len(),
        passed: count(Outcome::Passed),
        failed: count(Outcome::Failed),
        timed_out: count(Outcome::TimedOut),
        empty_completions: rows
            .iter()
            .filter(|r| r.completion.trim().is_empty())
            .count(),
        problems_solved: per_problem.values().filter(|&&(c, _)| c > 0).count(),
        pass_at_k: pass_at_k::mean_pass_at_k(&counts),
        per_problem,
        new_tokens,
        generation_seconds,
        execution_seconds: rows.iter().map(|r| r.exec_seconds).sum(),
        tokens_per_second: new_tokens as f64 / generation_seconds.max(1e-9),
        computed_now,
        resumed,
        sandbox: sandbox.clone(),
        seconds: started.elapsed().as_secs_f64(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The samples table, with the settings in its metadata.
fn write_samples(path: &Path, rows: &[SampleRow], config: &HumanEvalConfig) -> Result<()> {
    let mut frame = DataFrame::new_infer_height(vec![
        output::column_of("task_id", rows, |r| r.task_id.as_str()),
        output::column_of("sample", rows, |r| r.sample),
        output::column_of("completion", rows, |r| r.completion.as_str()),
        output::column_of("generation", rows, |r| r.generation.as_str()),
        output::column_of("outcome", rows, |r| r.outcome.as_str()),
        output::column_of("error", rows, |r| r.error.as_str()),
        output::column_of("tokens", rows, |r| r.tokens),
        output::column_of("seconds", rows, |r| r.seconds),
        output::column_of("exec_seconds", rows, |r| r.exec_seconds),
    ])?;
    output::write_parquet(
        &mut frame,
        path,
        &[(CONFIG_KEY.into(), serde_json::to_string(config)?)],
    )
}

/// The finished samples of an earlier run, refused when it ran with other settings (the
/// problem limit aside).
pub fn read_samples(path: &Path, config: &HumanEvalConfig) -> Result<Vec<SampleRow>> {
    let metadata = output::read_metadata(path)?;
    let stored: HumanEvalConfig =
        serde_json::from_str(&output::metadata_value(&metadata, CONFIG_KEY, path)?)
            .with_context(|| format!("{}: unreadable settings in its metadata", path.display()))?;
    let comparable = |c: &HumanEvalConfig| HumanEvalConfig {
        limit: None,
        ..c.clone()
    };
    let differences = output::config_differences(&comparable(&stored), &comparable(config))?;
    if !differences.is_empty() {
        bail!(
            "--resume: {} was written with other settings ({}); rerun with the same flags or another --out",
            path.display(),
            output::describe_differences(&differences)
        );
    }
    let frame = output::read_parquet(path)?;
    use output::column;
    let task_ids = column::strings(&frame, "task_id")?;
    let samples = column::u32s(&frame, "sample")?;
    let completions = column::strings(&frame, "completion")?;
    let generations = column::strings(&frame, "generation")?;
    let outcomes = column::strings(&frame, "outcome")?;
    let errors = column::strings(&frame, "error")?;
    let tokens = column::u32s(&frame, "tokens")?;
    let seconds = column::f64s(&frame, "seconds")?;
    let exec_seconds = column::f64s(&frame, "exec_seconds")?;
    (0..frame.height())
        .map(|i| {
            Ok(SampleRow {
                task_id: task_ids[i].clone(),
                sample: samples[i],
                completion: completions[i].clone(),
                generation: generations[i].clone(),
                outcome: Outcome::parse(&outcomes[i]).with_context(|| {
                    format!(
                        "{}: row {i}: unknown outcome {:?}",
                        path.display(),
                        outcomes[i]
                    )
                })?,
                error: errors[i].clone(),
                tokens: tokens[i],
                seconds: seconds[i],
                exec_seconds: exec_seconds[i],
            })
        })
        .collect()
}

impl HumanEvalReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} on HumanEval ({} prompts, {} problems × {} samples, {:.1} s){}\n",
            self.config.model,
            match self.config.prompt {
                PromptStyle::Completion => "completion",
                PromptStyle::Chat => "chat",
            },
            self.problems,
            self.config.samples,
            self.seconds,
            if self.status == "completed" {
                String::new()
            } else {
                format!(" [{}]", self.status)
            }
        );
        for (k, v) in &self.pass_at_k {
            out += &format!("  {k:<10} {:>6.2} %\n", 100.0 * v);
        }
        out += &format!(
            "  passed {}, failed {}, timed out {}; {} empty completions; {} of {} problems solved\n",
            self.passed,
            self.failed,
            self.timed_out,
            self.empty_completions,
            self.problems_solved,
            self.problems
        );
        out += &format!(
            "  {} new tokens in {:.1} s ({:.1} tokens/s); tests {:.1} s; network {}\n",
            self.new_tokens,
            self.generation_seconds,
            self.tokens_per_second,
            self.execution_seconds,
            if self.sandbox.network_isolated {
                "isolated (unshare -rn)"
            } else {
                "NOT isolated"
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems() -> Vec<Problem> {
        humaneval::load(&humaneval::default_file().unwrap()).unwrap()
    }

    #[test]
    fn completions_stop_at_the_first_codex_stop_sequence() {
        let text = "    return x + 1\n\n\ndef other():\n    pass\n# comment";
        assert_eq!(truncate_at_stop(text), "    return x + 1\n\n");
        assert_eq!(truncate_at_stop("    return 1\n#x\nif y"), "    return 1");
        assert_eq!(truncate_at_stop("    return 1"), "    return 1");
    }

    #[test]
    fn fenced_code_takes_the_first_block() {
        assert_eq!(
            fenced_code("Here:\n```python\nx = 1\n```\nand ```py\ny\n```"),
            Some("x = 1\n")
        );
        assert_eq!(fenced_code("```\nx = 1\n"), Some("x = 1\n"));
        assert_eq!(fenced_code("no code"), None);
        assert!(chat_block_closed("a ```python\nx\n``` b"));
        assert!(!chat_block_closed("a ```python\nx\n"));
    }

    /// A chat reply holding the canonical function in Markdown, or only the body without its
    /// indentation, becomes a program that passes the real tests; a wrong one fails.
    #[test]
    fn chat_replies_become_programs_that_pass() {
        let problems = problems();
        let timeout = Duration::from_secs(10);
        for p in &problems[..3] {
            let whole = format!(
                "Sure! Here is the function:\n\n```python\n{}{}```\n\nIt loops over the input.",
                p.prompt, p.canonical_solution
            );
            let completion = chat_completion(&whole, p);
            let run = execute::check(p, &completion, timeout).unwrap();
            assert_eq!(
                run.outcome,
                Outcome::Passed,
                "{}: {}",
                p.task_id,
                run.stderr
            );
            let dedented: String = p
                .canonical_solution
                .lines()
                .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
                .collect();
            let body = format!("```python\n{dedented}```");
            let run = execute::check(p, &chat_completion(&body, p), timeout).unwrap();
            assert_eq!(
                run.outcome,
                Outcome::Passed,
                "{}: {}",
                p.task_id,
                run.stderr
            );
        }
        let p = &problems[2]; // truncate_number(3.5) == 0.5
        let wrong = format!(
            "```python\ndef {}(number):\n    return 0.0\n```",
            p.entry_point
        );
        let run = execute::check(p, &chat_completion(&wrong, p), timeout).unwrap();
        assert_eq!(run.outcome, Outcome::Failed);
    }

    #[test]
    fn settings_are_checked() {
        let config = HumanEvalConfig {
            model: "m".into(),
            problems: "p".into(),
            prompt: PromptStyle::Completion,
            samples: 1,
            temperature: 0.0,
            top_p: 0.95,
            max_new_tokens: 16,
            timeout_seconds: 5.0,
            limit: None,
            seed: 0,
        };
        config.validate().unwrap();
        assert_eq!(config.decoding(3, 0), Decoding::Greedy);
        let many = HumanEvalConfig {
            samples: 5,
            ..config.clone()
        };
        assert!(format!("{}", many.validate().unwrap_err()).contains("--temperature"));
        let sampled = HumanEvalConfig {
            temperature: 0.8,
            ..many
        };
        sampled.validate().unwrap();
        // Every sample its own seed.
        let seeds: HashSet<String> = (0..3)
            .flat_map(|p| (0..5).map(move |s| (p, s)))
            .map(|(p, s)| format!("{:?}", sampled.decoding(p, s)))
            .collect();
        assert_eq!(seeds.len(), 15);
    }
}
