//! The training pass of the LLaMA decoder (`model/llama.rs`): causal-LM loss on response tokens
//! (the mean cross-entropy of each target token given the tokens before it) and the gradients
//! of the trained tensors only, on the rows' real tokens (no padding: rows are packed end to end
//! for the linear layers, attention runs row by row).
//!
//! Kept per layer for backward: the layer input, both RMSNorm outputs and their 1/rms, q and k
//! after rotary, v, every head's attention probabilities, the o_proj input, gate, up and the
//! SwiGLU product. `tests/llama_train.rs` checks the loss and every gradient against candle's
//! autograd on `Llama::forward(.., Mode::Training)` in f64, for each method.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use super::{grad_store, into_tensors, Gradients, Held, Params};
use crate::kernels::fused::Float;
use crate::kernels::gemm::{matmul_nn, matmul_nt, matmul_tn};
use crate::model::llama::{DecoderLayer, Llama, RmsNorm};

/// Rows of token ids; in row r, the tokens from `targets_from[r]` on are targets (each
/// predicted from the position before it), so `targets_from[r] ≥ 1`.
#[derive(Debug, Clone)]
pub struct LmBatch {
    pub rows: Vec<Vec<u32>>,
    pub targets_from: Vec<usize>,
}

impl LmBatch {
    /// Number of target tokens.
    pub fn targets(&self) -> usize {
        self.rows
            .iter()
            .zip(&self.targets_from)
            .map(|(r, &from)| r.len().saturating_sub(from))
            .sum()
    }
}

/// Mean target-token cross-entropy of `batch` and its gradients for every trained tensor.
pub fn loss_and_gradients(model: &Llama, batch: &LmBatch) -> Result<(f64, GradStore)> {
    let mut held = Held::default();
    for t in model_tensors(model) {
        held.hold(t)?;
    }
    let (loss, grads) = match model.embed.dtype() {
        DType::F32 => {
            let (loss, grads) = Pass::<f32>::new(model, &held, batch)?.run(true)?;
            (loss, into_tensors(grads)?)
        }
        _ => {
            let (loss, grads) = Pass::<f64>::new(model, &held, batch)?.run(true)?;
            (loss, into_tensors(grads)?)
        }
    };
    Ok((loss, grad_store(grads)?))
}

/// The loss alone (nothing kept for backward beyond one layer).
pub fn loss(model: &Llama, batch: &LmBatch) -> Result<f64> {
    let mut held = Held::default();
    for t in model_tensors(model) {
        held.hold(t)?;
    }
    match model.embed.dtype() {
        DType::F32 => Ok(Pass::<f32>::new(model, &held, batch)?.run(false)?.0),
        _ => Ok(Pass::<f64>::new(model, &held, batch)?.run(false)?.0),
    }
}

fn model_tensors(model: &Llama) -> Vec<&Tensor> {
    let mut out = vec![
        &model.embed,
        &model.lm_head,
        &model.norm.weight,
        &model.rotary.cos,
        &model.rotary.sin,
    ];
    for layer in &model.layers {
        out.extend([&layer.input_norm.weight, &layer.post_attention_norm.weight]);
        for l in layer.linears() {
            out.extend(l.tensors());
        }
    }
    out
}

/// What one layer keeps for backward.
struct Saved<T> {
    input: Vec<T>,
    norm1: Vec<T>,
    inv1: Vec<T>,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    /// Per row, per query head: (t × t) probabilities.
    probs: Vec<Vec<Vec<T>>>,
    attn_out: Vec<T>,
    mid: Vec<T>,
    norm2: Vec<T>,
    inv2: Vec<T>,
    gate: Vec<T>,
    up: Vec<T>,
    product: Vec<T>,
}

struct Pass<'a, T> {
    model: &'a Llama,
    params: Params<'a, T>,
    batch: &'a LmBatch,
    /// Start of each row in the packed tokens, and the total.
    starts: Vec<usize>,
    tokens: usize,
}

impl<'a, T: Float> Pass<'a, T> {
    fn new(model: &'a Llama, held: &'a Held<'a>, batch: &'a LmBatch) -> Result<Self> {
        let mut starts = Vec::with_capacity(batch.rows.len());
        let mut tokens = 0;
        for (row, &from) in batch.rows.iter().zip(&batch.targets_from) {
            if from == 0 || row.is_empty() {
                candle_core::bail!("a row's targets must start after its first token");
            }
            if row.len() > model.config.max_position_embeddings {
                candle_core::bail!(
                    "a row of {} tokens exceeds the model's {} positions",
                    row.len(),
                    model.config.max_position_embeddings
                );
            }
            starts.push(tokens);
            tokens += row.len();
        }
        if batch.targets() == 0 {
            candle_core::bail!("the batch has no target tokens");
        }
        Ok(Self {
            model,
            params: Params::new(held),
            batch,
            starts,
            tokens,
        })
    }

    fn run(mut self, backward: bool) -> Result<(f64, Gradients<T>)> {
        let m = self.model;
        let h = m.config.hidden_size;
        let embed = self.params.get(&m.embed)?;
        let ids: Vec<u32> = self.batch.rows.iter().flatten().copied().collect();
        let mut x = Vec::with_capacity(self.tokens * h);
        for &id in &ids {
            let id = id as usize;
            if id >= m.config.vocab_size {
                candle_core::bail!("token id {id} outside the vocabulary");
            }
            x.extend_from_slice(&embed[id * h..(id + 1) * h]);
        }
        // The lowest layer whose tensors train (the embedding counts as below layer 0).
        let lowest = if m.embed.track_op() {
            0
        } else {
            m.layers
                .iter()
                .position(layer_trained)
                .unwrap_or(m.layers.len())
        };
        let mut saved = Vec::new();
        for (l, layer) in m.layers.iter().enumerate() {
            let keep = backward && l >= lowest;
            let (out, s) = self.layer_forward(layer, x, keep)?;
            if let Some(s) = s {
                saved.push(s);
            }
            x = out;
        }
        // Final norm on the positions that predict a target.
        let mut picked = Vec::new();
        let mut targets = Vec::new();
        for (r, row) in self.batch.rows.iter().enumerate() {
            for t in self.batch.targets_from[r]..row.len() {
                picked.push(self.starts[r] + t - 1);
                targets.push(row[t] as usize);
            }
        }
        let rows_x: Vec<T> = picked
            .iter()
            .flat_map(|&p| x[p * h..(p + 1) * h].iter().copied())
            .collect();
        let norm_w = self.params.get(&m.norm.weight)?;
        let (normed, inv) = rms_forward(&rows_x, norm_w, m.norm.eps, h);
        let vocab = m.config.vocab_size;
        let head = self.params.get(&m.lm_head)?;
        let n = picked.len();
        let mut logits = vec![T::zero(); n * vocab];
        matmul_nt(&mut logits, false, &normed, head, (n, vocab, h));
        let mut total = 0.0;
        for (i, &y) in targets.iter().enumerate() {
            let row = &mut logits[i * vocab..(i + 1) * vocab];
            let max = row.iter().map(|v| v.g()).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v.g() - max).exp()).sum();
            let log_sum = max + sum.ln();
            total += log_sum - row[y].g();
            if backward {
                // d loss / d logits = (softmax − onehot) / n, in place.
                for (c, v) in row.iter_mut().enumerate() {
                    let p = (v.g() - log_sum).exp();
                    *v = T::f((p - if c == y { 1.0 } else { 0.0 }) / n as f64);
                }
            }
        }
        let loss = total / n as f64;
        if !backward {
            return Ok((loss, Vec::new()));
        }
        let d_logits = logits;
        if m.lm_head.track_op() {
            let dw = matmul_tn(&d_logits, &normed, (vocab, h, n));
            self.params.record(&m.lm_head, dw);
        }
        let mut d_normed = vec![T::zero(); n * h];
        matmul_nn(&mut d_normed, false, &d_logits, head, (n, h, vocab));
        let d_rows = self.rms_backward(&m.norm, &rows_x, &inv, &d_normed)?;
        let mut dx = vec![T::zero(); self.tokens * h];
        for (i, &p) in picked.iter().enumerate() {
            dx[p * h..(p + 1) * h].copy_from_slice(&d_rows[i * h..(i + 1) * h]);
        }
        for (layer, s) in m.layers[lowest..].iter().zip(saved).rev() {
            dx = self.layer_backward(layer, s, dx)?;
        }
        if m.embed.track_op() {
            let mut d_embed = vec![T::zero(); vocab * h];
            for (i, &id) in ids.iter().enumerate() {
                let id = id as usize;
                for j in 0..h {
                    d_embed[id * h + j] += dx[i * h + j];
                }
            }
            self.params.record(&m.embed, d_embed);
        }
        Ok((loss, self.params.grads))
    }

    fn layer_forward(
        &self,
        layer: &'a DecoderLayer,
        x: Vec<T>,
        keep: bool,
    ) -> Result<(Vec<T>, Option<Saved<T>>)> {
        let h = self.model.config.hidden_size;
        let a = &layer.attention;
        let (norm1, inv1) = rms_forward(
            &x,
            self.params.get(&layer.input_norm.weight)?,
            layer.input_norm.eps,
            h,
        );
        let mut q = self.params.linear_forward(&a.q, &norm1)?;
        let mut k = self.params.linear_forward(&a.k, &norm1)?;
        let v = self.params.linear_forward(&a.v, &norm1)?;
        self.rotate(&mut q, a.heads, false)?;
        self.rotate(&mut k, a.kv_heads, false)?;
        let (attn_out, probs) = self.attention_forward(&q, &k, &v, keep)?;
        let o = self.params.linear_forward(&a.o, &attn_out)?;
        let mid: Vec<T> = x.iter().zip(&o).map(|(&x, &o)| x + o).collect();
        let (norm2, inv2) = rms_forward(
            &mid,
            self.params.get(&layer.post_attention_norm.weight)?,
            layer.post_attention_norm.eps,
            h,
        );
        let gate = self.params.linear_forward(&layer.mlp.gate, &norm2)?;
        let up = self.params.linear_forward(&layer.mlp.up, &norm2)?;
        let product: Vec<T> = gate.iter().zip(&up).map(|(&g, &u)| silu(g) * u).collect();
        let down = self.params.linear_forward(&layer.mlp.down, &product)?;
        let out: Vec<T> = mid.iter().zip(&down).map(|(&m, &d)| m + d).collect();
        let saved = keep.then_some(Saved {
            input: x,
            norm1,
            inv1,
            q,
            k,
            v,
            probs,
            attn_out,
            mid,
            norm2,
            inv2,
            gate,
            up,
            product,
        });
        Ok((out, saved))
    }

    fn layer_backward(
        &mut self,
        layer: &'a DecoderLayer,
        s: Saved<T>,
        d_out: Vec<T>,
    ) -> Result<Vec<T>> {
        let a = &layer.attention;
        let mlp = &layer.mlp;
        // out = mid + down(silu(gate) · up).
        let mut d_product = vec![T::zero(); s.product.len()];
        self.params.linear_backward(
            &mlp.down,
            &s.product,
            &d_out,
            Some((&mut d_product, false)),
        )?;
        let mut d_gate = vec![T::zero(); s.gate.len()];
        let mut d_up = vec![T::zero(); s.up.len()];
        for i in 0..s.gate.len() {
            let (g, u, dp) = (s.gate[i], s.up[i], d_product[i]);
            let sig = T::f(1.0 / (1.0 + (-g.g()).exp()));
            d_up[i] = dp * g * sig;
            d_gate[i] = dp * u * sig * (T::one() + g * (T::one() - sig));
        }
        let mut d_norm2 = vec![T::zero(); s.norm2.len()];
        self.params
            .linear_backward(&mlp.gate, &s.norm2, &d_gate, Some((&mut d_norm2, false)))?;
        self.params
            .linear_backward(&mlp.up, &s.norm2, &d_up, Some((&mut d_norm2, true)))?;
        let mut d_mid = self.rms_backward(&layer.post_attention_norm, &s.mid, &s.inv2, &d_norm2)?;
        d_mid.iter_mut().zip(&d_out).for_each(|(d, &o)| *d += o);
        // mid = input + o(attention(rotary(q(norm1)), rotary(k(norm1)), v(norm1))).
        let mut d_attn = vec![T::zero(); s.attn_out.len()];
        self.params
            .linear_backward(&a.o, &s.attn_out, &d_mid, Some((&mut d_attn, false)))?;
        let (mut dq, mut dk, dv) = self.attention_backward(&s.q, &s.k, &s.v, &s.probs, &d_attn)?;
        self.rotate(&mut dq, a.heads, true)?;
        self.rotate(&mut dk, a.kv_heads, true)?;
        let mut d_norm1 = vec![T::zero(); s.norm1.len()];
        self.params
            .linear_backward(&a.q, &s.norm1, &dq, Some((&mut d_norm1, false)))?;
        self.params
            .linear_backward(&a.k, &s.norm1, &dk, Some((&mut d_norm1, true)))?;
        self.params
            .linear_backward(&a.v, &s.norm1, &dv, Some((&mut d_norm1, true)))?;
        let mut d_input = self.rms_backward(&layer.input_norm, &s.input, &s.inv1, &d_norm1)?;
        d_input.iter_mut().zip(&d_mid).for_each(|(d, &m)| *d += m);
        Ok(d_input)
    }

    /// Rotary embedding in place on (tokens × heads·d), each row at its position in its row of
    /// the batch; `inverse` rotates back (the backward pass: the transpose of a rotation).
    fn rotate(&self, x: &mut [T], heads: usize, inverse: bool) -> Result<()> {
        let m = self.model;
        let d = m.config.head_dim();
        let half = d / 2;
        let cos = self.params.get(&m.rotary.cos)?;
        let sin = self.params.get(&m.rotary.sin)?;
        for (r, row) in self.batch.rows.iter().enumerate() {
            for p in 0..row.len() {
                let token = &mut x[(self.starts[r] + p) * heads * d..][..heads * d];
                let (c, s) = (
                    &cos[p * half..(p + 1) * half],
                    &sin[p * half..(p + 1) * half],
                );
                for head in token.chunks_mut(d) {
                    for j in 0..half {
                        let (x1, x2) = (head[j], head[j + half]);
                        let sj = if inverse { T::zero() - s[j] } else { s[j] };
                        head[j] = x1 * c[j] - x2 * sj;
                        head[j + half] = x2 * c[j] + x1 * sj;
                    }
                }
            }
        }
        Ok(())
    }

    /// Causal attention row by row; returns (tokens × heads·d) and, if `keep`, the probabilities.
    fn attention_forward(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        keep: bool,
    ) -> Result<(Vec<T>, Vec<Vec<Vec<T>>>)> {
        let c = &self.model.config;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let group = heads / kv_heads;
        let scale = T::f(1.0 / (d as f64).sqrt());
        // Every (row, head) block is independent: computed in parallel, written back in order.
        let blocks = self.attention_blocks(heads);
        let computed: Vec<(Vec<T>, Vec<T>)> = blocks
            .par_iter()
            .map(|&(r, hq)| {
                let (start, t) = (self.starts[r], self.batch.rows[r].len());
                let hk = hq / group;
                let qh = head_block(q, start, t, heads, d, hq);
                let kh = head_block(k, start, t, kv_heads, d, hk);
                let vh = head_block(v, start, t, kv_heads, d, hk);
                let mut p = vec![T::zero(); t * t];
                matmul_nt(&mut p, false, &qh, &kh, (t, t, d));
                for i in 0..t {
                    let row = &mut p[i * t..(i + 1) * t];
                    let max = row[..=i]
                        .iter()
                        .map(|&s| (s * scale).g())
                        .fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0.0;
                    for (j, s) in row.iter_mut().enumerate() {
                        let e = if j <= i {
                            ((*s * scale).g() - max).exp()
                        } else {
                            0.0
                        };
                        sum += e;
                        *s = T::f(e);
                    }
                    row.iter_mut().for_each(|s| *s = T::f(s.g() / sum));
                }
                let mut oh = vec![T::zero(); t * d];
                matmul_nn(&mut oh, false, &p, &vh, (t, d, t));
                // Held for the backward pass only when asked: B·H·T² floats a layer.
                (oh, if keep { p } else { Vec::new() })
            })
            .collect();
        let mut out = vec![T::zero(); self.tokens * heads * d];
        let mut probs: Vec<Vec<Vec<T>>> = vec![Vec::new(); self.batch.rows.len()];
        for (&(r, hq), (oh, p)) in blocks.iter().zip(computed) {
            let (start, t) = (self.starts[r], self.batch.rows[r].len());
            scatter_block(&mut out, &oh, start, t, heads, d, hq, false);
            if keep {
                probs[r].push(p);
            }
        }
        Ok((out, probs))
    }

    /// The (row, head) pairs of the batch, row by row.
    fn attention_blocks(&self, heads: usize) -> Vec<(usize, usize)> {
        (0..self.batch.rows.len())
            .flat_map(|r| (0..heads).map(move |h| (r, h)))
            .collect()
    }

    fn attention_backward(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        probs: &[Vec<Vec<T>>],
        d_out: &[T],
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let c = &self.model.config;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let group = heads / kv_heads;
        let scale = T::f(1.0 / (d as f64).sqrt());
        let blocks = self.attention_blocks(heads);
        let computed: Vec<[Vec<T>; 3]> = blocks
            .par_iter()
            .map(|&(r, hq)| {
                let (start, t) = (self.starts[r], self.batch.rows[r].len());
                let hk = hq / group;
                let p = &probs[r][hq];
                let qh = head_block(q, start, t, heads, d, hq);
                let kh = head_block(k, start, t, kv_heads, d, hk);
                let vh = head_block(v, start, t, kv_heads, d, hk);
                let doh = head_block(d_out, start, t, heads, d, hq);
                // dV = Pᵀ·dO; dP = dO·Vᵀ; dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale.
                let dvh = matmul_tn(p, &doh, (t, d, t));
                let mut ds = vec![T::zero(); t * t];
                matmul_nt(&mut ds, false, &doh, &vh, (t, t, d));
                for i in 0..t {
                    let pr = &p[i * t..(i + 1) * t];
                    let dr = &mut ds[i * t..(i + 1) * t];
                    let dot: f64 = pr.iter().zip(dr.iter()).map(|(a, b)| a.g() * b.g()).sum();
                    for (dv, &pv) in dr.iter_mut().zip(pr) {
                        *dv = T::f(pv.g() * (dv.g() - dot)) * scale;
                    }
                }
                let mut dqh = vec![T::zero(); t * d];
                matmul_nn(&mut dqh, false, &ds, &kh, (t, d, t));
                let dkh = matmul_tn(&ds, &qh, (t, d, t));
                [dqh, dkh, dvh]
            })
            .collect();
        // Grouped query heads add into one key/value head: in the serial order, so the sums
        // do not depend on the thread count.
        let mut dq = vec![T::zero(); q.len()];
        let mut dk = vec![T::zero(); k.len()];
        let mut dv = vec![T::zero(); v.len()];
        for (&(r, hq), [dqh, dkh, dvh]) in blocks.iter().zip(computed) {
            let (start, t) = (self.starts[r], self.batch.rows[r].len());
            let hk = hq / group;
            scatter_block(&mut dv, &dvh, start, t, kv_heads, d, hk, true);
            scatter_block(&mut dq, &dqh, start, t, heads, d, hq, false);
            scatter_block(&mut dk, &dkh, start, t, kv_heads, d, hk, true);
        }
        Ok((dq, dk, dv))
    }

    /// dx of an RMSNorm at input `x` (1/rms `inv` per token); dw recorded if trained.
    fn rms_backward(&mut self, n: &RmsNorm, x: &[T], inv: &[T], dy: &[T]) -> Result<Vec<T>> {
        let w = self.params.get(&n.weight)?;
        let h = w.len();
        let mut dx = vec![T::zero(); x.len()];
        let mut dw = n.weight.track_op().then(|| vec![T::zero(); h]);
        for (row, ((xr, dyr), dxr)) in x
            .chunks(h)
            .zip(dy.chunks(h))
            .zip(dx.chunks_mut(h))
            .enumerate()
        {
            let r = inv[row];
            // y = x·r·w: dx = r·(dy ⊙ w) − x · r³/h · Σ dy ⊙ w ⊙ x.
            let dot: f64 = (0..h).map(|j| (dyr[j] * w[j] * xr[j]).g()).sum();
            let coef = T::f(r.g().powi(3) * dot / h as f64);
            for j in 0..h {
                dxr[j] = r * dyr[j] * w[j] - xr[j] * coef;
            }
            if let Some(dw) = dw.as_mut() {
                for j in 0..h {
                    dw[j] += dyr[j] * xr[j] * r;
                }
            }
        }
        if let Some(dw) = dw {
            self.params.record(&n.weight, dw);
        }
        Ok(dx)
    }
}

fn layer_trained(layer: &DecoderLayer) -> bool {
    layer.input_norm.weight.track_op()
        || layer.post_attention_norm.weight.track_op()
        || layer.linears().iter().any(|l| l.trained())
}

/// y = x / sqrt(mean(x²) + eps) · w per row of width h; also 1/rms per row.
fn rms_forward<T: Float>(x: &[T], w: &[T], eps: f64, h: usize) -> (Vec<T>, Vec<T>) {
    let mut y = vec![T::zero(); x.len()];
    let mut inv = Vec::with_capacity(x.len() / h);
    for (xr, yr) in x.chunks(h).zip(y.chunks_mut(h)) {
        let ms: f64 = xr.iter().map(|v| v.g() * v.g()).sum::<f64>() / h as f64;
        let r = T::f(1.0 / (ms + eps).sqrt());
        for j in 0..h {
            yr[j] = xr[j] * r * w[j];
        }
        inv.push(r);
    }
    (y, inv)
}

fn silu<T: Float>(g: T) -> T {
    T::f(g.g() / (1.0 + (-g.g()).exp()))
}

/// Head `head`'s (t × d) block of rows start..start+t of a (tokens × heads·d) buffer.
fn head_block<T: Float>(
    x: &[T],
    start: usize,
    t: usize,
    heads: usize,
    d: usize,
    head: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(t * d);
    for i in 0..t {
        let base = (start + i) * heads * d + head * d;
        out.extend_from_slice(&x[base..base + d]);
    }
    out
}

/// Writes (or adds) a (t × d) block back into head `head` of a (tokens × heads·d) buffer.
#[allow(clippy::too_many_arguments)]
fn scatter_block<T: Float>(
    x: &mut [T],
    block: &[T],
    start: usize,
    t: usize,
    heads: usize,
    d: usize,
    head: usize,
    add: bool,
) {
    for i in 0..t {
        let base = (start + i) * heads * d + head * d;
        let dst = &mut x[base..base + d];
        let src = &block[i * d..(i + 1) * d];
        if add {
            dst.iter_mut().zip(src).for_each(|(a, &b)| *a += b);
        } else {
            dst.copy_from_slice(src);
        }
    }
}
