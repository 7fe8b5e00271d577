//! Instruction data in Alpaca's JSON layout (a list of {instruction, input, output} records),
//! the Alpaca prompt template, response-only targets and a seeded held-out split.
//!
//! A record becomes prompt ids ++ response ids ++ EOS, truncated to `max_len`; the loss is the
//! mean cross-entropy of the response tokens (and EOS) given everything before them, so the
//! prompt's own tokens are never targets.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Instruction {
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    pub output: String,
}

impl Instruction {
    /// The Alpaca prompt (with or without the input block), ending where the response starts.
    pub fn prompt(&self) -> String {
        if self.input.trim().is_empty() {
            format!(
                "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{}\n\n### Response:\n",
                self.instruction
            )
        } else {
            format!(
                "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n",
                self.instruction, self.input
            )
        }
    }
}

/// The records of an Alpaca JSON file.
pub fn load(path: &Path) -> Result<Vec<Instruction>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--instructions {}: cannot read the file", path.display()))?;
    let values: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| {
        format!(
            "--instructions {}: not a JSON list of {{instruction, input, output}} records",
            path.display()
        )
    })?;
    let records = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value::<Instruction>(v).with_context(|| {
                format!(
                    "--instructions {}: record {i} (0-based) needs string fields instruction and output (input optional)",
                    path.display()
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if records.is_empty() {
        bail!("--instructions {}: no records", path.display());
    }
    Ok(records)
}

/// One record as token ids: the first `prompt_len` are the prompt, the rest the response + EOS.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedInstruction {
    /// Index of the record in the file.
    pub record: usize,
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

impl EncodedInstruction {
    /// Response tokens that are targets (each predicted from the position before it).
    pub fn targets(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// Encodes records with `encode` (the decoder's tokenizer), appending `eos` and truncating to
/// `max_len`; records whose prompt leaves no room for a response token are dropped (their count
/// is returned).
pub fn encode(
    records: &[Instruction],
    encode: impl Fn(&str, bool) -> Result<Vec<u32>>,
    eos: u32,
    max_len: usize,
) -> Result<(Vec<EncodedInstruction>, usize)> {
    let mut out = Vec::with_capacity(records.len());
    let mut dropped = 0;
    for (i, r) in records.iter().enumerate() {
        let mut ids = encode(&r.prompt(), true)?;
        let prompt_len = ids.len();
        ids.extend(encode(&r.output, false)?);
        ids.push(eos);
        ids.truncate(max_len);
        if prompt_len == 0 || ids.len() <= prompt_len {
            dropped += 1;
            continue;
        }
        out.push(EncodedInstruction {
            record: i,
            ids,
            prompt_len,
        });
    }
    Ok((out, dropped))
}

/// Indices 0..n split into (train, held out): a `fraction` of them (at least one, at most n − 1)
/// drawn from `seed`, each part in ascending order.
pub fn held_out_split(n: usize, fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!("--held-out {fraction}: must be in (0, 1)");
    }
    if n < 2 {
        bail!("{n} instruction records: need at least 2 to hold some out");
    }
    let held = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut held_out = order[..held].to_vec();
    let mut train = order[held..].to_vec();
    held_out.sort_unstable();
    train.sort_unstable();
    Ok((train, held_out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_follow_alpaca() {
        let with = Instruction {
            instruction: "Add.".into(),
            input: "1 2".into(),
            output: "3".into(),
        };
        assert!(with
            .prompt()
            .ends_with("### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n"));
        assert!(with
            .prompt()
            .starts_with("Below is an instruction that describes a task, paired with an input"));
        let without = Instruction {
            input: String::new(),
            ..with
        };
        assert_eq!(
            without.prompt(),
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Response:\n"
        );
    }

    /// A character tokenizer: prompt, then response + EOS, truncated; a prompt that fills
    /// max_len leaves no target and is dropped.
    #[test]
    fn encoding_marks_the_response() {
        let chars = |s: &str, _: bool| Ok(s.chars().map(|c| c as u32).collect::<Vec<u32>>());
        let r = Instruction {
            instruction: "x".into(),
            input: String::new(),
            output: "abc".into(),
        };
        let p = r.prompt().chars().count();
        let (enc, dropped) = encode(std::slice::from_ref(&r), chars, 0, p + 10).unwrap();
        assert_eq!(dropped, 0);
        assert_eq!(enc[0].prompt_len, p);
        assert_eq!(&enc[0].ids[p..], &[97, 98, 99, 0]);
        assert_eq!(enc[0].targets(), 4);
        let (enc, _) = encode(std::slice::from_ref(&r), chars, 0, p + 2).unwrap();
        assert_eq!(&enc[0].ids[p..], &[97, 98]);
        let (enc, dropped) = encode(&[r], chars, 0, p).unwrap();
        assert!(enc.is_empty());
        assert_eq!(dropped, 1);
    }

    #[test]
    fn held_out_split_is_seeded_and_disjoint() {
        let (train, held) = held_out_split(1000, 0.1, 42).unwrap();
        assert_eq!((train.len(), held.len()), (900, 100));
        let mut all: Vec<usize> = train.iter().chain(&held).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(held_out_split(1000, 0.1, 42).unwrap().1, held);
        assert_ne!(held_out_split(1000, 0.1, 43).unwrap().1, held);
        assert!(held_out_split(10, 1.0, 0).is_err());
    }

    #[test]
    fn shared_alpaca_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/alpaca/alpaca_data_1k.json");
        let records = load(&path).unwrap();
        assert_eq!(records.len(), 1000);
        assert_eq!(records.iter().filter(|r| !r.input.is_empty()).count(), 392);
    }

    #[test]
    fn bad_records_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        std::fs::write(
            &path,
            r#"[{"instruction": "a", "output": "b"}, {"instruction": "c"}]"#,
        )
        .unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(err.contains("record 1") && err.contains("a.json"), "{err}");
    }
}
