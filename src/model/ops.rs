//! Tensor ops with a backward pass tailored to sparse fine-tuning.
//!
//! candle's generic backward computes the gradient of every input of an op, including inputs
//! that are constants: for `x · Wᵀ` with a frozen W it still forms the dense `dW = δᵀx`, as
//! expensive as the forward matmul. These ops compute only what a trainable input needs.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// `x · wᵀ` for a weight that receives no gradient: the backward pass computes `dx = δ · w` and
/// nothing for `w`. `x` is 2-D (rows, in), `w` is (out, in).
pub fn frozen_matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op1_arc(std::sync::Arc::new(Box::new(FrozenMatmulT {
        weight: w.detach(),
    })))
}

struct FrozenMatmulT {
    weight: Tensor,
}

impl CustomOp1 for FrozenMatmulT {
    fn name(&self) -> &'static str {
        "frozen-matmul-t"
    }

    /// candle's own CPU GEMM on the storages, so the result is the same as `x.matmul(&w.t())`.
    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = layout.shape().dims2()?;
        let n = self.weight.dim(0)?;
        let wt = self.weight.t()?;
        let (storage, wt_layout) = wt.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*storage else {
            candle_core::bail!("frozen-matmul-t: CPU tensors only");
        };
        Ok((
            x.matmul(w, (1, m, n, k), layout, wt_layout)?,
            Shape::from((m, n)),
        ))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// `x · Δᵀ` for a sparse Δ (out × in) with entries `(rows[s], cols[s], values[s])`:
/// `y[n, r_s] = Σ_s v_s · x[n, c_s]`.
///
/// The backward pass computes exactly the sampled products a sparse increment needs,
/// `dv_s = Σ_n δ[n, r_s] · x[n, c_s]` (never the dense `δᵀx`) and `dx[n, c_s] += v_s · δ[n, r_s]`,
/// in O(rows · k) time and with no (rows × k) intermediates.
pub fn sparse_matmul_t(
    x: &Tensor,
    rows: &[u32],
    cols: &[u32],
    values: &Tensor,
    out_dim: usize,
) -> Result<Tensor> {
    let op = SparseMatmulT {
        rows: rows.into(),
        cols: cols.into(),
        out_dim,
    };
    x.apply_op2_arc(values, std::sync::Arc::new(Box::new(op)))
}

struct SparseMatmulT {
    rows: std::sync::Arc<[u32]>,
    cols: std::sync::Arc<[u32]>,
    out_dim: usize,
}

/// The slice behind a contiguous CPU tensor.
fn contiguous_slice<'a, T: candle_core::WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [T]> {
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("sparse-matmul-t: input must be contiguous".into())
    })?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

impl SparseMatmulT {
    fn forward<T: candle_core::WithDType>(&self, x: &[T], in_dim: usize, values: &[T]) -> Vec<T> {
        use rayon::prelude::*;
        let mut out = vec![T::zero(); x.len() / in_dim * self.out_dim];
        out.par_chunks_mut(self.out_dim)
            .zip(x.par_chunks(in_dim))
            .for_each(|(y, x)| {
                for ((&r, &c), &v) in self.rows.iter().zip(self.cols.iter()).zip(values) {
                    y[r as usize] += v * x[c as usize];
                }
            });
        out
    }

    /// (dx, dvalues) from the output gradient.
    fn backward<T: candle_core::WithDType>(
        &self,
        x: &[T],
        in_dim: usize,
        values: &[T],
        grad: &[T],
    ) -> (Vec<T>, Vec<T>) {
        use rayon::prelude::*;
        let k = values.len();
        let mut dx = vec![T::zero(); x.len()];
        dx.par_chunks_mut(in_dim)
            .zip(grad.par_chunks(self.out_dim))
            .for_each(|(dx, g)| {
                for ((&r, &c), &v) in self.rows.iter().zip(self.cols.iter()).zip(values) {
                    dx[c as usize] += v * g[r as usize];
                }
            });
        // Row blocks accumulate privately, then add up: no contention, deterministic per block.
        let block = 64;
        let dvalues = x
            .par_chunks(in_dim * block)
            .zip(grad.par_chunks(self.out_dim * block))
            .map(|(xb, gb)| {
                let mut acc = vec![T::zero(); k];
                for (x, g) in xb.chunks(in_dim).zip(gb.chunks(self.out_dim)) {
                    for (s, (&r, &c)) in self.rows.iter().zip(self.cols.iter()).enumerate() {
                        acc[s] += g[r as usize] * x[c as usize];
                    }
                }
                acc
            })
            .reduce(
                || vec![T::zero(); k],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        (dx, dvalues)
    }
}

impl CustomOp2 for SparseMatmulT {
    fn name(&self) -> &'static str {
        "sparse-matmul-t"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, in_dim) = xl.shape().dims2()?;
        let out = match x {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward(
                contiguous_slice::<f32>(x, xl)?,
                in_dim,
                contiguous_slice::<f32>(v, vl)?,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward(
                contiguous_slice::<f64>(x, xl)?,
                in_dim,
                contiguous_slice::<f64>(v, vl)?,
            )),
            _ => candle_core::bail!("sparse-matmul-t: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from((n, self.out_dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        values: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, values, grad) = (x.contiguous()?, values.contiguous()?, grad.contiguous()?);
        let in_dim = x.dim(1)?;
        let (xs, xl) = x.storage_and_layout();
        let (vs, vl) = values.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (
            candle_core::Storage::Cpu(xs),
            candle_core::Storage::Cpu(vs),
            candle_core::Storage::Cpu(gs),
        ) = (&*xs, &*vs, &*gs)
        else {
            candle_core::bail!("sparse-matmul-t: CPU tensors only");
        };
        let device = x.device();
        let (dx, dv) = match xs {
            CpuStorage::F32(_) => {
                let (dx, dv) = self.backward(
                    contiguous_slice::<f32>(xs, xl)?,
                    in_dim,
                    contiguous_slice::<f32>(vs, vl)?,
                    contiguous_slice::<f32>(gs, gl)?,
                );
                (
                    Tensor::from_vec(dx, x.shape(), device)?,
                    Tensor::from_vec(dv, values.shape(), device)?,
                )
            }
            CpuStorage::F64(_) => {
                let (dx, dv) = self.backward(
                    contiguous_slice::<f64>(xs, xl)?,
                    in_dim,
                    contiguous_slice::<f64>(vs, vl)?,
                    contiguous_slice::<f64>(gs, gl)?,
                );
                (
                    Tensor::from_vec(dx, x.shape(), device)?,
                    Tensor::from_vec(dv, values.shape(), device)?,
                )
            }
            _ => candle_core::bail!("sparse-matmul-t: only f32 and f64 are supported"),
        };
        Ok((Some(dx), Some(dv)))
    }
}
