//! The building blocks the architectures share: a linear layer carrying its fine-tuning
//! increment, and a layer norm. Each holds its tensors and has a candle-graph forward; the
//! training pass (`crate::backprop`) reads the same structs.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::Activation;
use super::increment::{Increment, Increments};
use crate::kernels;

/// Which kernels the candle-graph forward runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// candle's fused CPU layer norm, which records no backward pass.
    Inference,
    /// sift-lab's own layer norm, which does, so that `backward()` reaches every weight
    /// (candle's fused ops silently drop the gradient).
    Training,
}

/// y = x (W + Δ)ᵀ + b over the last dimension, for inputs of any rank, where the increment Δ is
/// absent (plain or full fine-tuning), sparse (SIFT, random) or low-rank (LoRA: Δ = s·B·A).
///
/// The training pass folds Δ into a copy of W once per pass (W + scatter(Δ), or W + s·B·A), so
/// its forward pass and dx are plain GEMMs; only Δ's own gradient uses the factors (the sampled
/// products at the k entries; dA, dB). The candle-graph forward below keeps Δ factored instead
/// (one sparse op, or x·Aᵀ·Bᵀ). A frozen W gets no gradient computed on either path.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
    /// What a fine-tuning method adds to `weight`.
    pub increment: Option<Increment>,
}

impl Linear {
    /// The layer under `vb`'s prefix, with the increment `increments` holds for its weight.
    pub(crate) fn new(
        vb: VarBuilder,
        increments: &Increments,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self> {
        let increment = increments.get(&format!("{}.weight", vb.prefix())).cloned();
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: vb.get(out_dim, "bias")?,
            increment,
        })
    }

    /// Every tensor the layer reads (the sparse increment's indices are not tensors).
    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        let mut out = vec![&self.weight, &self.bias];
        match &self.increment {
            None => {}
            Some(Increment::Sparse { values, .. }) => out.push(values),
            Some(Increment::LowRank { a, b, .. }) => out.extend([a, b]),
        }
        out
    }

    /// Whether any of its tensors is trained.
    pub(crate) fn trained(&self) -> bool {
        self.tensors().iter().any(|t| t.track_op())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let out_dim = self.weight.dim(0)?;
        let x2d = x.reshape((x.elem_count() / in_dim, in_dim))?;
        let y = match &self.increment {
            // One GEMM accumulating onto the bias; no dW for a frozen weight.
            None => kernels::linear::linear(&x2d, &self.weight, &self.bias)?,
            // Frozen W plus a trained sparse Δ: one op, no dW, only the k sampled products.
            Some(Increment::Sparse { rows, cols, values }) if !self.weight.track_op() => {
                kernels::linear::sparse_linear(&x2d, &self.weight, rows, cols, values, &self.bias)?
            }
            Some(Increment::Sparse { .. }) => {
                candle_core::bail!("a sparse increment on a trained weight is not supported")
            }
            Some(Increment::LowRank { a, b, scale }) => {
                let y = kernels::linear::linear(&x2d, &self.weight, &self.bias)?;
                (y + (x2d.matmul(&a.t()?)?.matmul(&b.t()?)? * *scale)?)?
            }
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = out_dim;
        y.reshape(out_dims)
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub(crate) fn new(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    /// Whether γ or β is trained.
    pub(crate) fn trained(&self) -> bool {
        self.weight.track_op() || self.bias.track_op()
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Inference => {
                candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
            }
            Mode::Training => kernels::fused::layer_norm(x, &self.weight, &self.bias, self.eps),
        }
    }
}

pub(crate) fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::GeluErf => kernels::fused::gelu_erf(x),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
        Activation::Silu => x.silu(),
    }
}
