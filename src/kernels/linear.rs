//! Linear layers: `x·Wᵀ + b` and `x·(W + Δ)ᵀ + b` (sparse Δ) as candle ops with a backward pass
//! tailored to sparse fine-tuning, and the slice kernels the training pass shares with them.
//!
//! candle's generic backward computes the gradient of every input of an op, including inputs
//! that are constants: for `x · Wᵀ` with a frozen W it still forms the dense `dW = δᵀx`, as
//! expensive as the forward matmul. These ops compute only what a trainable input needs.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::fused::{slice, with_slice};
use super::gemm::gemm_strided;

/// `x · wᵀ + b` (x 2-D (rows, in), w (out, in), b (out)) as one GEMM that accumulates onto the
/// bias rows, so the bias add costs no extra pass. The backward pass computes only what a
/// tracked input needs: `dx = δ · w`, `dw = δᵀ · x` (none for a frozen weight: candle's generic
/// matmul backward would form it anyway, as expensive as the forward) and `db = Σ_rows δ`.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3_arc(&w.contiguous()?, b, std::sync::Arc::new(Box::new(LinearOp)))
}

struct LinearOp;

/// `x · wᵀ + b` on slices: x (rows × in), w (out × in), b (out), all row-major.
pub(crate) fn dense_forward<T: candle_core::WithDType>(x: &[T], w: &[T], b: &[T]) -> Vec<T> {
    let (n, k) = (b.len(), w.len() / b.len());
    let m = x.len() / k;
    let mut y: Vec<T> = Vec::with_capacity(m * n);
    for _ in 0..m {
        y.extend_from_slice(b);
    }
    // y (m × n, row-major) += x (m × k, row-major) · wᵀ (k × n: element (i, j) at w[j·k + i]).
    unsafe {
        gemm_strided(
            (m, n, k),
            y.as_mut_ptr(),
            (1, n as isize),
            true,
            x.as_ptr(),
            (1, k as isize),
            w.as_ptr(),
            (k as isize, 1),
            true,
        )
    };
    y
}

/// `y[n, rows[s]] += values[s] · x[n, cols[s]]` for every row n: a sparse Δ's share of y = x·Δᵀ.
fn sparse_forward_add<T: candle_core::WithDType>(
    y: &mut [T],
    x: &[T],
    (rows, cols, values): (&[u32], &[u32], &[T]),
    (in_dim, out_dim): (usize, usize),
) {
    use rayon::prelude::*;
    y.par_chunks_mut(out_dim)
        .zip(x.par_chunks(in_dim))
        .for_each(|(y, x)| {
            for ((&r, &c), &v) in rows.iter().zip(cols).zip(values) {
                y[r as usize] += v * x[c as usize];
            }
        });
}

/// `dx[n, cols[s]] += values[s] · δ[n, rows[s]]`: a sparse Δ's share of dx = δ·Δ.
fn sparse_dx_add<T: candle_core::WithDType>(
    dx: &mut [T],
    grad: &[T],
    (rows, cols, values): (&[u32], &[u32], &[T]),
    (in_dim, out_dim): (usize, usize),
) {
    use rayon::prelude::*;
    dx.par_chunks_mut(in_dim)
        .zip(grad.par_chunks(out_dim))
        .for_each(|(dx, g)| {
            for ((&r, &c), &v) in rows.iter().zip(cols).zip(values) {
                dx[c as usize] += v * g[r as usize];
            }
        });
}

/// The sampled products `dv_s = Σ_n δ[n, rows[s]] · x[n, cols[s]]`: the entries of δᵀx at the
/// selected positions, without forming δᵀx. Row blocks accumulate privately, then add up.
pub(crate) fn sampled_products<T: candle_core::WithDType>(
    x: &[T],
    grad: &[T],
    (rows, cols): (&[u32], &[u32]),
    (in_dim, out_dim): (usize, usize),
) -> Vec<T> {
    use rayon::prelude::*;
    let k = rows.len();
    let block = 64;
    x.par_chunks(in_dim * block)
        .zip(grad.par_chunks(out_dim * block))
        .map(|(xb, gb)| {
            let mut acc = vec![T::zero(); k];
            for (x, g) in xb.chunks(in_dim).zip(gb.chunks(out_dim)) {
                for (s, (&r, &c)) in rows.iter().zip(cols).enumerate() {
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
        )
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, wk) = wl.shape().dims2()?;
        if wk != k || bl.shape().elem_count() != n {
            candle_core::bail!(
                "linear: x {:?}, w {:?}, b {:?} do not fit",
                xl.shape(),
                wl.shape(),
                bl.shape()
            );
        }
        let y = match x {
            CpuStorage::F32(_) => CpuStorage::F32(dense_forward(
                slice::<f32>(x, xl)?,
                slice::<f32>(w, wl)?,
                slice::<f32>(b, bl)?,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(dense_forward(
                slice::<f64>(x, xl)?,
                slice::<f64>(w, wl)?,
                slice::<f64>(b, bl)?,
            )),
            _ => candle_core::bail!("linear: only f32 and f64 are supported"),
        };
        Ok((y, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // On detached inputs: a gradient that recorded ops would keep the forward graph (and,
        // through the optimizer's moments, every earlier step's) alive.
        let grad = grad.detach().contiguous()?;
        let dx = if x.track_op() {
            Some(grad.matmul(&w.detach())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(grad.t()?.matmul(&x.detach())?)
        } else {
            None
        };
        let db = if b.track_op() {
            Some(column_sums(&grad)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// Σ over rows of a row-major matrix with `n` columns: row blocks summed in parallel, each a
/// run of vectorisable row additions (candle's `sum(0)` walks the matrix column-strided).
pub(crate) fn column_sums_of<T: candle_core::WithDType>(g: &[T], n: usize) -> Vec<T> {
    use rayon::prelude::*;
    g.par_chunks(n * 256)
        .map(|block| {
            let mut acc = vec![T::zero(); n];
            for row in block.chunks_exact(n) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .reduce(
            || vec![T::zero(); n],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

fn column_sums(grad: &Tensor) -> Result<Tensor> {
    let n = grad.dim(1)?;
    match grad.dtype() {
        candle_core::DType::F32 => Tensor::new(
            column_sums_of(&grad.flatten_all()?.to_vec1::<f32>()?, n),
            grad.device(),
        ),
        candle_core::DType::F64 => Tensor::new(
            column_sums_of(&grad.flatten_all()?.to_vec1::<f64>()?, n),
            grad.device(),
        ),
        d => candle_core::bail!("linear: unsupported dtype {d:?}"),
    }
}

/// `x · (W + Δ)ᵀ + b` for a frozen W and a sparse Δ (out × in) with entries
/// `(rows[s], cols[s], values[s])`, in one op: GEMM onto the bias rows, then
/// `y[n, r_s] += v_s · x[n, c_s]` in place.
///
/// The backward pass computes exactly what a sparse increment needs: the sampled products
/// `dv_s = Σ_n δ[n, r_s] · x[n, c_s]` (never the dense `δᵀx`), `dx = δ · W` plus
/// `dx[n, c_s] += v_s · δ[n, r_s]`, and `db` if the bias is trained; no dW.
pub fn sparse_linear(
    x: &Tensor,
    weight: &Tensor,
    rows: &[u32],
    cols: &[u32],
    values: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    let op = SparseLinear {
        weight: weight.detach().contiguous()?,
        rows: rows.into(),
        cols: cols.into(),
    };
    x.contiguous()?
        .apply_op3_arc(values, bias, std::sync::Arc::new(Box::new(op)))
}

struct SparseLinear {
    weight: Tensor,
    rows: std::sync::Arc<[u32]>,
    cols: std::sync::Arc<[u32]>,
}

impl SparseLinear {
    fn forward<T: candle_core::WithDType>(&self, x: &[T], w: &[T], v: &[T], b: &[T]) -> Vec<T> {
        let mut y = dense_forward(x, w, b);
        let dims = (w.len() / b.len(), b.len());
        sparse_forward_add(&mut y, x, (&self.rows, &self.cols, v), dims);
        y
    }

    /// (dx, dvalues) from the output gradient.
    fn backward<T: candle_core::WithDType>(
        &self,
        x: &[T],
        w: &[T],
        values: &[T],
        grad: &[T],
        want_dx: bool,
    ) -> (Option<Vec<T>>, Vec<T>) {
        let (out_dim, in_dim) = (self.weight.dims()[0], self.weight.dims()[1]);
        let m = x.len() / in_dim;
        let dx = want_dx.then(|| {
            let mut dx = vec![T::zero(); x.len()];
            // dx (m × in) = δ (m × out) · W (out × in), then the sparse part row by row.
            unsafe {
                gemm_strided(
                    (m, in_dim, out_dim),
                    dx.as_mut_ptr(),
                    (1, in_dim as isize),
                    false,
                    grad.as_ptr(),
                    (1, out_dim as isize),
                    w.as_ptr(),
                    (1, in_dim as isize),
                    true,
                )
            };
            let entries = (&self.rows[..], &self.cols[..], values);
            sparse_dx_add(&mut dx, grad, entries, (in_dim, out_dim));
            dx
        });
        let dvalues = sampled_products(x, grad, (&self.rows, &self.cols), (in_dim, out_dim));
        (dx, dvalues)
    }
}

impl CustomOp3 for SparseLinear {
    fn name(&self) -> &'static str {
        "sparse-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, _) = xl.shape().dims2()?;
        let out_dim = self.weight.dim(0)?;
        macro_rules! run {
            ($t:ty) => {
                with_slice::<$t, _>(&self.weight, |w| {
                    Ok(self.forward(
                        slice::<$t>(x, xl)?,
                        w,
                        slice::<$t>(v, vl)?,
                        slice::<$t>(b, bl)?,
                    ))
                })?
            };
        }
        let out = match x {
            CpuStorage::F32(_) => CpuStorage::F32(run!(f32)),
            CpuStorage::F64(_) => CpuStorage::F64(run!(f64)),
            _ => candle_core::bail!("sparse-linear: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from((n, out_dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        values: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach().contiguous()?;
        let device = x.device();
        macro_rules! run {
            ($t:ty) => {
                with_slice::<$t, _>(x, |xs| {
                    with_slice::<$t, _>(&self.weight, |ws| {
                        with_slice::<$t, _>(values, |vs| {
                            with_slice::<$t, _>(&grad, |gs| {
                                let (dx, dv) = self.backward(xs, ws, vs, gs, x.track_op());
                                Ok((
                                    dx.map(|dx| Tensor::from_vec(dx, x.shape(), device))
                                        .transpose()?,
                                    Tensor::from_vec(dv, values.shape(), device)?,
                                ))
                            })
                        })
                    })
                })?
            };
        }
        let (dx, dv) = match x.dtype() {
            candle_core::DType::F32 => run!(f32),
            candle_core::DType::F64 => run!(f64),
            d => candle_core::bail!("sparse-linear: unsupported dtype {d:?}"),
        };
        let db = if bias.track_op() {
            Some(column_sums(&grad)?)
        } else {
            None
        };
        Ok((dx, values.track_op().then_some(dv), db))
    }
}
