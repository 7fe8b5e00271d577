//! CPU kernels: what the models and the training pass compute with, independent of any
//! architecture.
//!
//! - [`gemm`]: strided GEMM on slices (the one matrix-product entry point);
//! - [`linear`]: `x·Wᵀ + b` and `x·(W + Δ)ᵀ + b` for a sparse Δ, as candle ops with their own
//!   backward (for the candle-graph forward) and as slice kernels (for the training pass);
//! - [`attention`]: multi-head self-attention, padded (candle op) and packed (slices);
//! - [`fused`]: layer norm, GELU and the row softmax, forward and backward in one pass each;
//! - [`fast_math`]: branch-free vectorisable f32 `exp` and `erf`.
//!
//! Each kernel comes as a candle op (`CustomOp`, recording a backward pass, used by
//! `model::bert`'s candle-graph forward) and/or as a function on slices (used by `backprop`).

pub mod attention;
pub mod fast_math;
pub mod fused;
pub mod gemm;
pub mod linear;
