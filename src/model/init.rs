//! θ0: the seeded random initialisation of an architecture, with transformers' initialiser
//! (`_init_weights` of BERT/RoBERTa): Linear and Embedding weights ~ N(0, initializer_range²),
//! the padding rows of embeddings with a padding index set to zero, biases 0, LayerNorm 1 / 0.
//!
//! Each tensor draws from its own stream of one seeded generator (the stream is a hash of the
//! tensor name), so a tensor's values depend only on (seed, name, shape): the task head drawn
//! for θ1 is bit-identical to θ0's, and tensors can be drawn in any order or in parallel.

use candle_core::{Device, Result, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::config::{EncoderConfig, Family};

/// How one tensor is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// N(0, std²), with optionally one row set to zero (the padding index).
    Normal {
        std: f64,
        zero_row: Option<usize>,
    },
}

/// The initialiser transformers applies to the tensor called `name`.
pub fn init_for(name: &str, config: &EncoderConfig) -> Init {
    if name.contains("LayerNorm") {
        return if name.ends_with(".weight") {
            Init::Ones
        } else {
            Init::Zeros
        };
    }
    if name.ends_with(".bias") {
        return Init::Zeros;
    }
    let pad = config.pad_id() as usize;
    let zero_row = match (name, config.family()) {
        ("embeddings.word_embeddings.weight", _) => Some(pad),
        ("embeddings.position_embeddings.weight", Ok(Family::Roberta)) => Some(pad),
        _ => None,
    };
    Init::Normal {
        std: config.initializer_range,
        zero_row,
    }
}

/// A stable 64-bit hash of a tensor name (FNV-1a), used as its random stream.
fn name_stream(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Draws one tensor of `shape` with `init`, from the stream of (`seed`, `name`).
pub fn draw(name: &str, shape: &[usize], init: Init, seed: u64, device: &Device) -> Result<Tensor> {
    match init {
        Init::Zeros => Tensor::zeros(shape, candle_core::DType::F32, device),
        Init::Ones => Tensor::ones(shape, candle_core::DType::F32, device),
        Init::Normal { std, zero_row } => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(name_stream(name));
            let normal =
                Normal::new(0.0f32, std as f32).expect("initializer_range must be finite and >= 0");
            let numel: usize = shape.iter().product();
            let mut values: Vec<f32> = (0..numel).map(|_| normal.sample(&mut rng)).collect();
            if let (Some(row), [rows, cols]) = (zero_row, shape) {
                if row < *rows {
                    values[row * cols..(row + 1) * cols].fill(0.0);
                }
            }
            Tensor::from_vec(values, shape, device)
        }
    }
}

/// U(−bound, bound) of `shape`, from the stream of (`seed`, `name`) (used for LoRA's A).
pub fn uniform(
    name: &str,
    shape: (usize, usize),
    bound: f64,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(name_stream(name));
    let dist =
        rand_distr::Uniform::new_inclusive(-bound as f32, bound as f32).expect("finite bound");
    let values: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| dist.sample(&mut rng))
        .collect();
    Tensor::from_vec(values, shape, device)
}
