//! `sift-lab bench --decoder`: seconds per training step of the default decoder (SmolLM2) for
//! full fine-tuning, SIFT and LoRA on `q,k,v,o,gate,up,down`, and greedy generation tokens per
//! second with the KV cache; `scripts/bench_torch_decoder.py` measures the same with PyTorch +
//! transformers (+ peft) and `scripts/bench_compare.py --decoder` prints both with the ratio.
//!
//! The batch is `batch_size` rows of `seq_len` token ids from a fixed formula (below), so that
//! both sides see the same ids without sharing a tokenizer; the loss is over every position
//! after the first (transformers' `labels = input_ids`). Step time does not depend on which
//! ids they are.

use anyhow::{bail, Result};
use candle_core::Device;

use crate::backprop::llama::{loss_and_gradients, LmBatch};
use crate::bench::{time, Arm, BenchConfig, BenchReport};
use crate::generate::{generate, Decoding};
use crate::methods::{FineTuning, MethodKind};
use crate::model::decoder::load_decoder;
use crate::model::llama::Llama;
use crate::optim::{AdamW, AdamWConfig};
use crate::{budget, select};

/// The modules every decoder arm trains (the paper's LLaMA targets).
pub const TARGETS: &str = "q,k,v,o,gate,up,down";
/// The prompt of the generation arm: its tokens are the first `PROMPT_TOKENS` ids of row 0.
pub const PROMPT_TOKENS: usize = 32;

/// Token id at (row, position): `(1 + 7919·(row·seq_len + position)) mod vocab`, the same
/// formula as scripts/bench_torch_decoder.py.
pub fn token_id(row: usize, position: usize, seq_len: usize, vocab: usize) -> u32 {
    ((1 + 7919 * (row * seq_len + position)) % vocab) as u32
}

fn batch(config: &BenchConfig, vocab: usize) -> LmBatch {
    LmBatch {
        rows: (0..config.batch_size)
            .map(|r| {
                (0..config.seq_len)
                    .map(|p| token_id(r, p, config.seq_len, vocab))
                    .collect()
            })
            .collect(),
        targets_from: vec![1; config.batch_size],
    }
}

pub fn run(config: &BenchConfig) -> Result<BenchReport> {
    config.validate()?;
    let decoder = load_decoder(&config.model, &Device::Cpu)?;
    let llama = &decoder.config;
    if config.seq_len > llama.max_position_embeddings {
        bail!(
            "--seq-len {}: the decoder has rotary angles for {} positions",
            config.seq_len,
            llama.max_position_embeddings
        );
    }
    let mut report = BenchReport::new(config);
    let base = &decoder.weights;
    let names: Vec<String> = llama.tensor_shapes().into_iter().map(|(n, _)| n).collect();
    let targets = select::decoder_target_names(TARGETS, &names)?;
    let method = match config.arm {
        None | Some(Arm::Forward) => {
            bail!("--decoder measures one of --arm full, sift, lora or generate")
        }
        Some(Arm::Generate) => {
            let model = decoder.build()?;
            let prompt: Vec<u32> = (0..PROMPT_TOKENS)
                .map(|p| token_id(0, p, config.seq_len, llama.vocab_size))
                .collect();
            // No EOS stop: every timed call makes exactly seq_len new tokens.
            let seconds = time(config.warmup, config.iters, || {
                generate(
                    &model,
                    &prompt,
                    config.seq_len,
                    None,
                    Decoding::Greedy,
                    |_| false,
                )?;
                Ok(())
            })?;
            report.generate_tokens_per_s = Some(config.seq_len as f64 / seconds);
            report.peak_rss_mib = crate::peak_rss::peak_rss_mib();
            return Ok(report);
        }
        Some(Arm::Full) => FineTuning::dense(MethodKind::Full, base, &[])?,
        Some(Arm::Sift) => {
            // Selection is not part of a step; a seeded draw of the same budget stands in for it.
            let shapes: Vec<(String, Vec<usize>)> = targets
                .iter()
                .map(|n| (n.clone(), base[n].dims().to_vec()))
                .collect();
            let selected = budget::select_random(&shapes, 0.01, 0);
            FineTuning::sparse(MethodKind::Sift, base, &[], &selected)?
        }
        Some(Arm::Lora) => FineTuning::lora(
            base,
            &[],
            &targets,
            config.lora_rank,
            2.0 * config.lora_rank as f64,
            0,
        )?,
    };
    let x = batch(config, llama.vocab_size);
    let mut optimizer = AdamW::new(method.params()?, AdamWConfig::default())?;
    let seconds = time(config.warmup, config.iters, || {
        let weights = method.effective_weights()?;
        let model = Llama::new(llama, &weights.weights, &weights.increments)?;
        let (_, grads) = loss_and_gradients(&model, &x)?;
        let gradients = optimizer.gradients(&grads)?;
        optimizer.step(&gradients, 1e-5)?;
        Ok(())
    })?;
    report.train_step_s = Some(seconds);
    report.trainable_params = Some(method.trainable_count()?);
    report.optimizer_state_bytes = Some(optimizer.state_bytes());
    report.peak_rss_mib = crate::peak_rss::peak_rss_mib();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_follow_the_formula_shared_with_the_python_side() {
        // By hand: (1 + 7919 · (1·256 + 3)) mod 49152 = 2051022 mod 49152 = 35790.
        assert_eq!(token_id(1, 3, 256, 49_152), 35_790);
        assert_eq!(token_id(0, 0, 256, 49_152), 1);
    }
}
