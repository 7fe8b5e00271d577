//! Multi-head self-attention as one op with its own backward pass.
//!
//! q, k and v stay in their (B·T, H·D) projection layout: each (batch, head) block is read
//! through GEMM strides, so the head split and merge need no transposed copies. The backward
//! pass recomputes the (T × T) attention weights from q and k instead of storing them (they cost
//! B·H·T² floats per layer; recomputing costs one small GEMM per block), and the whole block
//! is one node in candle's graph instead of a dozen (candle's backward allocates and adds a
//! zero tensor for every input of every node).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fast_math::vectorized;
use super::fused::{lane_dot, slice, softmax_row, with_slice, Float};
use super::gemm::gemm_strided;

/// softmax(q_h·k_hᵀ / √D + mask)·v_h for every head h, concatenated: (B·T, H·D) → (B·T, H·D).
/// `mask` is (B, T): 0 at tokens, a large negative number at padding (a constant).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let op = Attention {
        mask: mask.detach().contiguous()?,
        heads,
    };
    q.contiguous()?.apply_op3_arc(
        &k.contiguous()?,
        &v.contiguous()?,
        std::sync::Arc::new(Box::new(op)),
    )
}

struct Attention {
    mask: Tensor,
    heads: usize,
}

/// Attention over packed sequences: sequence i is rows `start..start + len` of q, k, v (rows,
/// H·D), for each `(start, len)` in `sequences`, and attends to itself only, with no mask.
/// This is [`attention`] with the padding rows removed: a padding key gets weight exactly 0
/// there (exp(−1e30) underflows), and a padding query's row reaches no token's output.
pub(crate) fn forward_packed<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    sequences: &[(usize, usize)],
    heads: usize,
) -> Vec<T> {
    let rows: usize = sequences.iter().map(|s| s.1).sum();
    let blocks = Blocks::packed(sequences, heads, q.len() / rows.max(1));
    Attention::forward_blocks(q, k, v, None, &blocks)
}

/// The backward pass of [`forward_packed`]: (dq, dk, dv) from the output gradient.
#[allow(clippy::type_complexity)]
pub(crate) fn backward_packed<T: Float>(
    (q, k, v): (&[T], &[T], &[T]),
    grad: &[T],
    sequences: &[(usize, usize)],
    heads: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows: usize = sequences.iter().map(|s| s.1).sum();
    let blocks = Blocks::packed(sequences, heads, q.len() / rows.max(1));
    Attention::backward_blocks(q, k, v, None, grad, &blocks)
}

/// A raw pointer that rayon tasks may share: each task writes a disjoint (sequence, head) block.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

/// One (sequence, head) block: `len` rows from element `base` of a (rows, H·D) matrix, with
/// its mask row at `mask[mask_offset..]` if there is a mask.
#[derive(Clone, Copy)]
struct Block {
    base: usize,
    len: usize,
    mask_offset: usize,
}

/// The blocks of one call, and the shared shapes: D and the row stride H·D.
struct Blocks {
    blocks: Vec<Block>,
    head_dim: usize,
    width: usize,
}

impl Blocks {
    /// B sequences of T rows each (padded; the mask is (B, T)).
    fn padded(batch: usize, seq: usize, heads: usize, width: usize) -> Self {
        let sequences: Vec<(usize, usize)> = (0..batch).map(|b| (b * seq, seq)).collect();
        Self::packed(&sequences, heads, width)
    }

    fn packed(sequences: &[(usize, usize)], heads: usize, width: usize) -> Self {
        let head_dim = width / heads;
        let blocks = sequences
            .iter()
            .enumerate()
            .flat_map(|(i, &(start, len))| {
                (0..heads).map(move |h| Block {
                    base: start * width + h * head_dim,
                    len,
                    mask_offset: i * len,
                })
            })
            .collect();
        Self {
            blocks,
            head_dim,
            width,
        }
    }

    fn check(rows: usize, width: usize, mask: &Tensor, heads: usize) -> Result<Self> {
        let (batch, seq) = mask.dims2()?;
        if batch * seq != rows || !width.is_multiple_of(heads) {
            candle_core::bail!(
                "attention: {rows} × {width} inputs do not fit a {batch} × {seq} mask and {heads} heads"
            );
        }
        Ok(Self::padded(batch, seq, heads, width))
    }
}

/// Attention weights of one block: probs = softmax(scale · q_b·k_bᵀ + mask_b), row-major T × T.
fn weights<T: Float>(
    q: &[T],
    k: &[T],
    mask: Option<&[T]>,
    blocks: &Blocks,
    block: Block,
    probs: &mut [T],
) {
    let (t, d, w) = (block.len, blocks.head_dim, blocks.width as isize);
    let base = block.base;
    let mut scores = vec![T::zero(); t * t];
    // scores (t × t) = q_b (t × d; row stride w) · k_bᵀ (d × t: element (i, j) at k[j·w + i]).
    unsafe {
        gemm_strided(
            (t, t, d),
            scores.as_mut_ptr(),
            (1, t as isize),
            false,
            q[base..].as_ptr(),
            (1, w),
            k[base..].as_ptr(),
            (w, 1),
            false,
        )
    };
    let mask_row = mask.map(|m| &m[block.mask_offset..block.mask_offset + t]);
    let scale = T::f(1.0 / (d as f64).sqrt());
    vectorized(
        #[inline(always)]
        || {
            for (s, p) in scores.chunks(t).zip(probs.chunks_mut(t)) {
                softmax_row(s, p, scale, mask_row);
            }
        },
    );
}

impl Attention {
    fn forward_blocks<T: Float>(
        q: &[T],
        k: &[T],
        v: &[T],
        mask: Option<&[T]>,
        blocks: &Blocks,
    ) -> Vec<T> {
        let (d, w) = (blocks.head_dim, blocks.width as isize);
        let mut out = vec![T::zero(); q.len()];
        let dst = Shared(out.as_mut_ptr());
        blocks.blocks.par_iter().for_each(|&block| {
            let dst = dst;
            let t = block.len;
            let mut probs = vec![T::zero(); t * t];
            weights(q, k, mask, blocks, block, &mut probs);
            // out_b (t × d; row stride w) = probs (t × t) · v_b (t × d; row stride w).
            unsafe {
                gemm_strided(
                    (t, d, t),
                    dst.0.add(block.base),
                    (1, w),
                    false,
                    probs.as_ptr(),
                    (1, t as isize),
                    v[block.base..].as_ptr(),
                    (1, w),
                    false,
                )
            };
        });
        out
    }

    /// (dq, dk, dv). With P the weights, G the output gradient and s = 1/√D, per block:
    /// dP = G·vᵀ, dv = Pᵀ·G, dS = s·P ⊙ (dP − rowsum(dP ⊙ P)), dq = dS·k, dk = dSᵀ·q.
    #[allow(clippy::type_complexity)]
    fn backward_blocks<T: Float>(
        q: &[T],
        k: &[T],
        v: &[T],
        mask: Option<&[T]>,
        grad: &[T],
        blocks: &Blocks,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (d, w) = (blocks.head_dim, blocks.width as isize);
        let (mut dq, mut dk, mut dv) = (
            vec![T::zero(); q.len()],
            vec![T::zero(); q.len()],
            vec![T::zero(); q.len()],
        );
        let (dq_ptr, dk_ptr, dv_ptr) = (
            Shared(dq.as_mut_ptr()),
            Shared(dk.as_mut_ptr()),
            Shared(dv.as_mut_ptr()),
        );
        let scale = T::f(1.0 / (d as f64).sqrt());
        blocks.blocks.par_iter().for_each(|&block| {
            let (dq_ptr, dk_ptr, dv_ptr) = (dq_ptr, dk_ptr, dv_ptr);
            let (base, t) = (block.base, block.len);
            let ti = t as isize;
            let mut probs = vec![T::zero(); t * t];
            weights(q, k, mask, blocks, block, &mut probs);
            let mut dprobs = vec![T::zero(); t * t];
            unsafe {
                // dP (t × t) = G_b (t × d) · v_bᵀ (d × t).
                gemm_strided(
                    (t, t, d),
                    dprobs.as_mut_ptr(),
                    (1, ti),
                    false,
                    grad[base..].as_ptr(),
                    (1, w),
                    v[base..].as_ptr(),
                    (w, 1),
                    false,
                );
                // dv_b (t × d) = Pᵀ (t × t: element (i, j) at P[j·t + i]) · G_b.
                gemm_strided(
                    (t, d, t),
                    dv_ptr.0.add(base),
                    (1, w),
                    false,
                    probs.as_ptr(),
                    (ti, 1),
                    grad[base..].as_ptr(),
                    (1, w),
                    false,
                );
            }
            // dS, in place of dP.
            vectorized(
                #[inline(always)]
                || {
                    for (dp, p) in dprobs.chunks_mut(t).zip(probs.chunks(t)) {
                        let dot = lane_dot(dp, Some(p));
                        for (a, &b) in dp.iter_mut().zip(p) {
                            *a = scale * b * (*a - dot);
                        }
                    }
                },
            );
            unsafe {
                // dq_b (t × d) = dS (t × t) · k_b (t × d).
                gemm_strided(
                    (t, d, t),
                    dq_ptr.0.add(base),
                    (1, w),
                    false,
                    dprobs.as_ptr(),
                    (1, ti),
                    k[base..].as_ptr(),
                    (1, w),
                    false,
                );
                // dk_b (t × d) = dSᵀ · q_b.
                gemm_strided(
                    (t, d, t),
                    dk_ptr.0.add(base),
                    (1, w),
                    false,
                    dprobs.as_ptr(),
                    (ti, 1),
                    q[base..].as_ptr(),
                    (1, w),
                    false,
                );
            }
        });
        (dq, dk, dv)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, width) = ql.shape().dims2()?;
        if kl.shape() != ql.shape() || vl.shape() != ql.shape() {
            candle_core::bail!("attention: q, k, v shapes differ");
        }
        let blocks = Blocks::check(rows, width, &self.mask, self.heads)?;
        macro_rules! run {
            ($t:ty) => {
                with_slice::<$t, _>(&self.mask, |mask| {
                    Ok(Self::forward_blocks(
                        slice::<$t>(q, ql)?,
                        slice::<$t>(k, kl)?,
                        slice::<$t>(v, vl)?,
                        Some(mask),
                        &blocks,
                    ))
                })?
            };
        }
        let out = match q {
            CpuStorage::F32(_) => CpuStorage::F32(run!(f32)),
            CpuStorage::F64(_) => CpuStorage::F64(run!(f64)),
            _ => candle_core::bail!("attention: only f32 and f64"),
        };
        Ok((out, ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, width) = q.dims2()?;
        let blocks = Blocks::check(rows, width, &self.mask, self.heads)?;
        macro_rules! run {
            ($t:ty) => {
                with_slice::<$t, _>(q, |qs| {
                    with_slice::<$t, _>(k, |ks| {
                        with_slice::<$t, _>(v, |vs| {
                            with_slice::<$t, _>(&self.mask, |ms| {
                                with_slice::<$t, _>(grad, |gs| {
                                    let (dq, dk, dv) =
                                        Self::backward_blocks(qs, ks, vs, Some(ms), gs, &blocks);
                                    let shape = q.shape();
                                    Ok((
                                        Tensor::from_vec(dq, shape, q.device())?,
                                        Tensor::from_vec(dk, shape, q.device())?,
                                        Tensor::from_vec(dv, shape, q.device())?,
                                    ))
                                })
                            })
                        })
                    })
                })?
            };
        }
        let (dq, dk, dv) = match q.dtype() {
            candle_core::DType::F32 => run!(f32),
            candle_core::DType::F64 => run!(f64),
            d => candle_core::bail!("attention: unsupported dtype {d:?}"),
        };
        let keep = |t: &Tensor, g: Tensor| t.track_op().then_some(g);
        Ok((keep(q, dq), keep(k, dk), keep(v, dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    /// The same function from candle's elementary ops (head split by reshape/transpose, an
    /// explicit scaled, masked softmax), differentiated by candle's generic backward.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, heads: usize) -> Tensor {
        let (batch, seq) = mask.dims2().unwrap();
        let width = q.dim(1).unwrap();
        let d = width / heads;
        let split = |t: &Tensor| {
            t.reshape((batch, seq, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let scores = (split(q).matmul(&split(k).t().unwrap()).unwrap() / (d as f64).sqrt())
            .unwrap()
            .broadcast_add(&mask.reshape((batch, 1, 1, seq)).unwrap())
            .unwrap();
        let max = scores.max_keepdim(D::Minus1).unwrap();
        let exp = scores.broadcast_sub(&max).unwrap().exp().unwrap();
        let probs = exp
            .broadcast_div(&exp.sum_keepdim(D::Minus1).unwrap())
            .unwrap();
        probs
            .matmul(&split(v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((batch * seq, width))
            .unwrap()
    }

    #[test]
    fn forward_and_gradients_match_the_unfused_composition() {
        let device = Device::Cpu;
        let (batch, seq, heads, d) = (2, 5, 3, 4);
        let rows = batch * seq;
        let var = |seed: u64| {
            let values: Vec<f64> = (0..rows * heads * d)
                .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 500.0 - 1.0)
                .collect();
            Var::from_vec(values, (rows, heads * d), &device).unwrap()
        };
        let (q, k, v) = (var(1), var(2), var(3));
        // Second sequence padded after 3 tokens.
        let mask = Tensor::new(
            &[[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1e30, -1e30]],
            &device,
        )
        .unwrap();
        let upstream = Tensor::arange(0.0, (rows * heads * d) as f64, &device)
            .unwrap()
            .reshape((rows, heads * d))
            .unwrap()
            .sin()
            .unwrap();
        let fused = attention(&q, &k, &v, &mask, heads).unwrap();
        let plain = reference(&q, &k, &v, &mask, heads);
        let diff = (&fused - &plain).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        let g_fused = (fused * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_plain = (plain * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for t in [&q, &k, &v] {
            let a = g_fused.get(t.as_tensor()).unwrap();
            let b = g_plain.get(t.as_tensor()).unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(scale > 1e-3, "gradient should not vanish");
            assert!(diff.to_scalar::<f64>().unwrap() < 1e-10 * scale.max(1.0));
        }
        assert_eq!(q.dtype(), DType::F64);
    }
}
