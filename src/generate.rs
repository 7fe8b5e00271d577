//! Text generation from a decoder with a KV cache: the prompt once, then one new token at a time
//! (no recomputation of earlier positions), sampled by candle-transformers' `LogitsProcessor`
//! (greedy, or temperature with top-p). HumanEval's completions will come from here.

use anyhow::Result;
use candle_core::{Device, IndexOp, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};

use crate::model::llama::{KvCache, Llama};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decoding {
    Greedy,
    /// Temperature sampling restricted to the top-p nucleus, from `seed`.
    Sample {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

/// Up to `max_new` tokens after `prompt`, stopping after `eos` or when `stop` says the tokens so
/// far are complete (e.g. HumanEval's stop sequences). Returns the new tokens only.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    max_new: usize,
    eos: Option<u32>,
    decoding: Decoding,
    stop: impl Fn(&[u32]) -> bool,
) -> Result<Vec<u32>> {
    let (seed, sampling) = match decoding {
        Decoding::Greedy => (0, Sampling::ArgMax),
        Decoding::Sample {
            temperature,
            top_p,
            seed,
        } => (
            seed,
            Sampling::TopP {
                p: top_p,
                temperature,
            },
        ),
    };
    let mut processor = LogitsProcessor::from_sampling(seed, sampling);
    let mut cache = KvCache::default();
    let mut new = Vec::new();
    let mut input = prompt.to_vec();
    while new.len() < max_new {
        let ids = Tensor::new(input.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward_cached(&ids, &mut cache)?;
        let last = logits.i((0, input.len() - 1))?;
        let token = processor.sample(&last)?;
        new.push(token);
        if Some(token) == eos || stop(&new) {
            break;
        }
        input = vec![token];
    }
    Ok(new)
}
