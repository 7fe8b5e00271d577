//! What a fine-tuning method adds to a linear layer's weight, as a typed value beside the
//! weight map rather than extra entries in it.
//!
//! A method's effective weights ([`EffectiveWeights`]) are a weight map (θ1 with the densely
//! trained tensors, and targets other than linear weights rebuilt as W + scatter(values)) plus
//! one [`Increment`] per targeted linear weight, keyed by the weight's name. The classifier is
//! built from both (`Pretrained::build`); its `Linear` layers hold their increment and fold it
//! into W (see `model::layers::Linear`).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;

use super::WeightMap;

/// The increment Δ a method adds to a linear weight W (out × in).
#[derive(Debug, Clone)]
pub enum Increment {
    /// SIFT, random: Δ non-zero at k entries, Δ[rows[s], cols[s]] = values[s]; `values` (k) is
    /// what trains.
    Sparse {
        rows: Arc<[u32]>,
        cols: Arc<[u32]>,
        values: Tensor,
    },
    /// LoRA: Δ = scale·B·A, with A (r × in), B (out × r) and scale = α / r.
    LowRank { a: Tensor, b: Tensor, scale: f64 },
}

/// Increments by the name of the linear weight they add to (e.g.
/// `encoder.layer.0.attention.self.query.weight`).
pub type Increments = BTreeMap<String, Increment>;

/// What a classifier is built from under a fine-tuning method: the weight map and the
/// increments of its linear layers. Tensors refer to the method's live `Var`s.
#[derive(Debug, Clone, Default)]
pub struct EffectiveWeights {
    pub weights: WeightMap,
    pub increments: Increments,
}

/// Anything a classifier can be built from: a plain weight map (no increments) or a method's
/// effective weights.
pub trait ClassifierWeights {
    fn weights(&self) -> &WeightMap;
    fn increments(&self) -> &Increments;
}

static NO_INCREMENTS: Increments = BTreeMap::new();

impl ClassifierWeights for WeightMap {
    fn weights(&self) -> &WeightMap {
        self
    }
    fn increments(&self) -> &Increments {
        &NO_INCREMENTS
    }
}

impl ClassifierWeights for EffectiveWeights {
    fn weights(&self) -> &WeightMap {
        &self.weights
    }
    fn increments(&self) -> &Increments {
        &self.increments
    }
}
