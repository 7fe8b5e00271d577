//! sift-lab's training pass, written out per architecture: a forward pass that keeps what the
//! backward pass needs, and a backward pass, layer by layer, that forms only the gradients of
//! the tensors being trained (those with `track_op()`). It is also the forward pass evaluation
//! runs (`logits`, nothing kept).
//!
//! Why not candle's `backward()`: for every input of every node it allocates a zero tensor and
//! adds the incoming gradient into it, and it walks the whole graph even where nothing below is
//! trained. On a SIFT step that bookkeeping cost as much as the backward GEMMs. Here residual
//! gradients accumulate in place (the GEMM that forms dx adds onto them), the backward pass stops
//! at the lowest trained tensor, and the kernels are the ones the candle ops run
//! (`crate::kernels`). The pass runs on the batch's real tokens only: padding changes no loss
//! and no gradient, so it is not computed.
//!
//! Layout: one file per architecture of `crate::model` (`bert.rs` for `model/bert.rs`, `llama.rs`
//! for `model/llama.rs`), reading
//! that architecture's structs; this file holds what is architecture-independent: read access
//! to the tensors ([`Held`]), the linear layer and layer norm passes with the method's increment
//! folded in ([`Params`]), the loss and its logit gradient, and the hand-over of the gradients
//! as a candle `GradStore`.
//!
//! `tests/train.rs` checks the loss, every gradient and the logits against candle's autograd
//! on the model's candle-graph forward, on the same padded batch, for full, head, SIFT (incl.
//! non-linear targets) and LoRA.

pub mod bert;
pub mod llama;

pub use bert::{logits, loss_and_gradients};

use std::borrow::Cow;
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Storage, StorageRef, Tensor, TensorId, WithDType};
use rayon::prelude::*;

use crate::kernels::fused::{self, Float};
use crate::kernels::gemm::{matmul_nn, matmul_nt, matmul_tn, Dims3};
use crate::kernels::linear::{column_sums_of, dense_forward, sampled_products};
use crate::model::layers::{LayerNorm, Linear};
use crate::model::Increment;

/// Read access to the model's tensors for the length of one pass (CPU, contiguous).
#[derive(Default)]
struct Held<'a> {
    guards: HashMap<TensorId, (StorageRef<'a>, usize, usize)>,
}

impl<'a> Held<'a> {
    fn hold(&mut self, t: &'a Tensor) -> Result<()> {
        if self.guards.contains_key(&t.id()) {
            return Ok(());
        }
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("training pass: model tensors must be contiguous".into())
        })?;
        self.guards.insert(t.id(), (storage, start, end));
        Ok(())
    }

    fn get<T: WithDType>(&self, t: &Tensor) -> Result<&[T]> {
        let (storage, start, end) = self
            .guards
            .get(&t.id())
            .ok_or_else(|| candle_core::Error::Msg("training pass: tensor not held".into()))?;
        let Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("training pass: CPU tensors only")
        };
        Ok(&cpu.as_slice::<T>()?[*start..*end])
    }
}

/// A training batch's labels: class indices, or regression targets.
enum Labels {
    Classes(Vec<u32>),
    Targets(Vec<f64>),
}

/// A trained tensor and its gradient.
type Gradients<T> = Vec<(Tensor, Vec<T>)>;

fn into_tensors<T: WithDType>(grads: Gradients<T>) -> Result<Vec<(Tensor, Tensor)>> {
    grads
        .into_iter()
        .map(|(t, g)| {
            let g = Tensor::from_vec(g, t.shape(), t.device())?;
            Ok((t, g))
        })
        .collect()
}

/// A `GradStore` holding `grads`. A trained tensor that is a `Var` gets its gradient directly;
/// one computed from `Var`s (a sparse increment on a bias or LayerNorm, rebuilt as W +
/// scatter(values)) passes it on through candle's autograd, by differentiating Σ t ⊙ g.
fn grad_store(grads: Vec<(Tensor, Tensor)>) -> Result<GradStore> {
    let mut surrogate: Option<Tensor> = None;
    let mut leaves = Vec::new();
    for (t, g) in grads {
        if t.is_variable() {
            leaves.push((t, g));
        } else {
            let term = (t * g)?.sum_all()?;
            surrogate = Some(match surrogate {
                Some(s) => (s + term)?,
                None => term,
            });
        }
    }
    // candle has no public constructor for an empty store: a constant's backward gives one.
    let mut store = match surrogate {
        Some(s) => s.backward()?,
        None => Tensor::zeros((), DType::F32, &candle_core::Device::Cpu)?.backward()?,
    };
    for (t, g) in leaves {
        store.insert(&t, g);
    }
    Ok(store)
}

/// `dst += src`, element-wise.
fn add_into<T: WithDType>(dst: &mut [T], src: &[T]) {
    dst.par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d += s));
}

/// What a linear layer's tensors hold, as slices, with its effective weight.
struct LinearSlices<'a, T: Clone> {
    /// W + scatter(Δ) (SIFT, random), formed once per pass: an out × in copy costs little next
    /// to the GEMMs, and the forward pass and dx are then plain GEMMs. Borrowed W otherwise: LoRA
    /// stays factored (x·Wᵀ + s·(x·Aᵀ)·Bᵀ), as forming W + s·B·A is a dense out × in pass
    /// per use with a rank-r GEMM that is all memory traffic.
    weight: Cow<'a, [T]>,
    bias: &'a [T],
    in_dim: usize,
    out_dim: usize,
    /// Sparse Δ: rows, columns.
    delta: Option<(&'a [u32], &'a [u32])>,
    /// LoRA: A (r × in), B (out × r), r, α/r.
    lora: Option<(&'a [T], &'a [T], usize, T)>,
}

/// The model's tensors as slices for one pass, and the gradients recorded for the trained ones;
/// runs the layers every architecture shares.
struct Params<'a, T> {
    held: &'a Held<'a>,
    grads: Gradients<T>,
}

/// LoRA's s·(x·Aᵀ) (rows × r), x (rows × in), A (r × in).
fn lora_hidden<T: Float>(x: &[T], a: &[T], scale: T, (rows, rank, in_dim): Dims3) -> Vec<T> {
    let mut hidden = vec![T::zero(); rows * rank];
    matmul_nt(&mut hidden, false, x, a, (rows, rank, in_dim));
    hidden.iter_mut().for_each(|v| *v *= scale);
    hidden
}

impl<'a, T: Float> Params<'a, T> {
    fn new(held: &'a Held<'a>) -> Self {
        Self {
            held,
            grads: Vec::new(),
        }
    }

    fn get(&self, t: &Tensor) -> Result<&'a [T]> {
        self.held.get(t)
    }

    /// Records `g` as (part of) the gradient of `t`, if `t` is trained.
    fn record(&mut self, t: &Tensor, g: Vec<T>) {
        if !t.track_op() {
            return;
        }
        match self.grads.iter_mut().find(|(seen, _)| seen.id() == t.id()) {
            Some((_, sum)) => add_into(sum, &g),
            None => self.grads.push((t.clone(), g)),
        }
    }

    fn linear(&self, l: &'a Linear) -> Result<LinearSlices<'a, T>> {
        let (out_dim, in_dim) = l.weight.dims2()?;
        let base = self.get(&l.weight)?;
        let mut weight = Cow::Borrowed(base);
        let (mut delta, mut lora) = (None, None);
        match &l.increment {
            None => {}
            Some(Increment::Sparse { rows, cols, values }) => {
                let w = weight.to_mut();
                for ((&r, &c), &v) in rows.iter().zip(cols.iter()).zip(self.get(values)?) {
                    w[r as usize * in_dim + c as usize] += v;
                }
                delta = Some((&rows[..], &cols[..]));
            }
            Some(Increment::LowRank { a, b, scale }) => {
                let rank = a.dim(0)?;
                lora = Some((self.get(a)?, self.get(b)?, rank, T::f(*scale)));
            }
        }
        Ok(LinearSlices {
            weight,
            bias: self.get(&l.bias)?,
            in_dim,
            out_dim,
            delta,
            lora,
        })
    }

    /// y = x·W_effᵀ + b (LoRA: + s·(x·Aᵀ)·Bᵀ).
    fn linear_forward(&self, l: &'a Linear, x: &[T]) -> Result<Vec<T>> {
        let s = self.linear(l)?;
        let mut y = dense_forward(x, &s.weight, s.bias);
        if let Some((a, b, rank, scale)) = s.lora {
            let rows = x.len() / s.in_dim;
            let hidden = lora_hidden(x, a, scale, (rows, rank, s.in_dim));
            matmul_nt(&mut y, true, &hidden, b, (rows, s.out_dim, rank));
        }
        Ok(y)
    }

    /// From the output gradient `dy`: the gradients of the layer's trained tensors, and dx
    /// into `dx` (overwritten, or added to with `accumulate`) if given.
    fn linear_backward(
        &mut self,
        l: &'a Linear,
        x: &[T],
        dy: &[T],
        dx: Option<(&mut [T], bool)>,
    ) -> Result<()> {
        let s = self.linear(l)?;
        let rows = x.len() / s.in_dim;
        let (in_dim, out_dim) = (s.in_dim, s.out_dim);
        // LoRA's δ·B (rows × r), scaled: dx's low-rank share and dA's left factor.
        let dy_b = s.lora.map(|(_, b, rank, scale)| {
            let mut g = vec![T::zero(); rows * rank];
            matmul_nn(&mut g, false, dy, b, (rows, rank, out_dim));
            g.iter_mut().for_each(|v| *v *= scale);
            g
        });
        if let Some((dx, accumulate)) = dx {
            matmul_nn(dx, accumulate, dy, &s.weight, (rows, in_dim, out_dim));
            if let (Some((a, _, rank, _)), Some(g)) = (s.lora, &dy_b) {
                matmul_nn(dx, true, g, a, (rows, in_dim, rank));
            }
        }
        if l.weight.track_op() {
            let dw = matmul_tn(dy, x, (out_dim, in_dim, rows));
            self.record(&l.weight, dw);
        }
        if l.bias.track_op() {
            self.record(&l.bias, column_sums_of(dy, out_dim));
        }
        if let (Some(Increment::Sparse { values, .. }), Some(entries)) = (&l.increment, s.delta) {
            if values.track_op() {
                let dv = sampled_products(x, dy, entries, (in_dim, out_dim));
                self.record(values, dv);
            }
        }
        // LoRA, W_eff = W + s·B·A: dB = s·δᵀ·(x·Aᵀ), dA = s·(δ·B)ᵀ·x.
        if let (Some(Increment::LowRank { a: ta, b: tb, .. }), Some((a, _, rank, scale))) =
            (&l.increment, s.lora)
        {
            if tb.track_op() {
                let hidden = lora_hidden(x, a, scale, (rows, rank, in_dim));
                self.record(tb, matmul_tn(dy, &hidden, (out_dim, rank, rows)));
            }
            if let (true, Some(g)) = (ta.track_op(), &dy_b) {
                self.record(ta, matmul_tn(g, x, (rank, in_dim, rows)));
            }
        }
        Ok(())
    }

    fn norm_forward(&self, n: &LayerNorm, x: &[T]) -> Result<Vec<T>> {
        let kernel = fused::LayerNorm { eps: n.eps };
        Ok(kernel.forward(x, self.get(&n.weight)?, self.get(&n.bias)?))
    }

    /// dx of a layer norm at input `x`; dγ and dβ recorded if trained.
    fn norm_backward(&mut self, n: &LayerNorm, x: &[T], dy: &[T]) -> Result<Vec<T>> {
        let kernel = fused::LayerNorm { eps: n.eps };
        let (dx, params) = kernel.backward(x, self.get(&n.weight)?, dy, n.trained());
        if let Some((dgamma, dbeta)) = params {
            self.record(&n.weight, dgamma);
            self.record(&n.bias, dbeta);
        }
        Ok(dx)
    }
}

/// Mean loss over the batch and its gradient with respect to the logits (B × L): softmax
/// cross-entropy for class labels, squared error for regression targets.
fn loss_and_logit_gradient<T: Float>(
    logits: &[T],
    labels: &Labels,
    batch: usize,
) -> Result<(f64, Vec<T>)> {
    let classes = logits.len() / batch;
    let mut d_logits = vec![T::zero(); logits.len()];
    let mut total = 0.0;
    for b in 0..batch {
        let row = &logits[b * classes..(b + 1) * classes];
        let d_row = &mut d_logits[b * classes..(b + 1) * classes];
        match labels {
            Labels::Classes(y) => {
                let y = y[b] as usize;
                if y >= classes {
                    candle_core::bail!("label {y} out of range for {classes} classes");
                }
                let max = row.iter().map(|v| v.g()).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| (v.g() - max).exp()).sum();
                let log_sum = max + sum.ln();
                total += log_sum - row[y].g();
                for (c, d) in d_row.iter_mut().enumerate() {
                    let p = (row[c].g() - log_sum).exp();
                    let target = if c == y { 1.0 } else { 0.0 };
                    *d = T::f((p - target) / batch as f64);
                }
            }
            Labels::Targets(y) => {
                let diff = row[0].g() - y[b];
                total += diff * diff;
                d_row[0] = T::f(2.0 * diff / batch as f64);
            }
        }
    }
    Ok((total / batch as f64, d_logits))
}
