//! Fused CPU kernels that record a backward pass: layer norm and GELU; and the row softmax the
//! attention op (`attention.rs`) uses.
//!
//! candle's own fused versions (`candle_nn::ops::layer_norm`, `softmax_last_dim`) drop the
//! gradient, and the versions built from elementary ops cost a dozen passes over memory (each a
//! fresh allocation) forward and again backward. These do one pass per direction, row-parallel.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::fast_math::{self, vectorized};

/// Float types the kernels run on. f32 (training and evaluation) uses the vectorisable
/// approximations of `fast_math`; f64 (the finite-difference tests) uses libm's exact functions.
pub(crate) trait Float: WithDType + Send + Sync {
    fn f(x: f64) -> Self;
    fn g(self) -> f64;
    fn exp(self) -> Self;
    fn erf(self) -> Self;
}
impl Float for f32 {
    #[inline(always)]
    fn f(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn g(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp(self) -> Self {
        fast_math::exp_f32(self)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        fast_math::erf_f32(self)
    }
}
impl Float for f64 {
    #[inline(always)]
    fn f(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn g(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp(self) -> Self {
        libm::exp(self)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        libm::erf(self)
    }
}

pub(super) fn slice<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op: input must be contiguous".into()))?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// Lanes of the reductions below: independent partial results that the compiler can keep in
/// one vector register (a float sum in one accumulator is a serial chain it may not reorder).
const LANES: usize = 16;

/// Σ a_i·b_i (Σ a_i without b), accumulated in `LANES` partial sums.
#[inline(always)]
pub(super) fn lane_dot<T: Float>(a: &[T], b: Option<&[T]>) -> T {
    let mut acc = [T::zero(); LANES];
    let full = a.len() / LANES * LANES;
    match b {
        Some(b) => {
            for (ca, cb) in a[..full]
                .chunks_exact(LANES)
                .zip(b[..full].chunks_exact(LANES))
            {
                for i in 0..LANES {
                    acc[i] += ca[i] * cb[i];
                }
            }
            for i in full..a.len() {
                acc[0] += a[i] * b[i];
            }
        }
        None => {
            for ca in a[..full].chunks_exact(LANES) {
                for i in 0..LANES {
                    acc[i] += ca[i];
                }
            }
            for &v in &a[full..] {
                acc[0] += v;
            }
        }
    }
    acc.iter().fold(T::zero(), |s, &v| s + v)
}

/// max_i a_i (a non-empty), in `LANES` partial maxima.
#[inline(always)]
pub(super) fn lane_max<T: Float>(a: &[T]) -> T {
    let mut acc = [a[0]; LANES];
    let full = a.len() / LANES * LANES;
    for ca in a[..full].chunks_exact(LANES) {
        for i in 0..LANES {
            acc[i] = if ca[i] > acc[i] { ca[i] } else { acc[i] };
        }
    }
    for &v in &a[full..] {
        acc[0] = if v > acc[0] { v } else { acc[0] };
    }
    acc.iter().fold(acc[0], |m, &v| if v > m { v } else { m })
}

/// Runs `f` on the CPU slice of a contiguous tensor.
pub(super) fn with_slice<T: WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fused op: CPU tensors only")
    };
    f(slice::<T>(cpu, layout)?)
}

// ---------------------------------------------------------------- layer norm

/// `(x − mean) / sqrt(var + eps) · γ + β` over the last dimension, with gradients for x, γ, β.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3_arc(
        gamma,
        beta,
        std::sync::Arc::new(Box::new(LayerNorm { eps })),
    )
}

pub(crate) struct LayerNorm {
    pub(crate) eps: f64,
}

impl LayerNorm {
    pub(crate) fn forward<T: Float>(&self, x: &[T], gamma: &[T], beta: &[T]) -> Vec<T> {
        let h = gamma.len();
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(h * 16)
            .zip(x.par_chunks(h * 16))
            .for_each(|(y, x)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for (y, x) in y.chunks_mut(h).zip(x.chunks(h)) {
                            let (mean, rstd) = moments(x, self.eps);
                            for i in 0..h {
                                y[i] = T::f((x[i].g() - mean) * rstd * gamma[i].g() + beta[i].g());
                            }
                        }
                    },
                )
            });
        y
    }

    /// (dx, and with `params` (dγ, dβ)). With x̂ = (x − mean)·rstd and d = δ·γ:
    /// dx = rstd · (d − mean(d) − x̂ · mean(d · x̂)); dγ = Σ_rows δ·x̂; dβ = Σ_rows δ.
    #[allow(clippy::type_complexity)]
    pub(crate) fn backward<T: Float>(
        &self,
        x: &[T],
        gamma: &[T],
        grad: &[T],
        params: bool,
    ) -> (Vec<T>, Option<(Vec<T>, Vec<T>)>) {
        let h = gamma.len();
        let mut dx = vec![T::zero(); x.len()];
        dx.par_chunks_mut(h * 16)
            .zip(x.par_chunks(h * 16))
            .zip(grad.par_chunks(h * 16))
            .for_each(|((dx, x), g)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for ((dx, x), g) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                            let (mean, rstd) = moments(x, self.eps);
                            let mean_d = lane_sum(h, |i| g[i].g() * gamma[i].g()) / h as f64;
                            let mean_dx =
                                lane_sum(h, |i| g[i].g() * gamma[i].g() * (x[i].g() - mean) * rstd)
                                    / h as f64;
                            for i in 0..h {
                                let xhat = (x[i].g() - mean) * rstd;
                                dx[i] = T::f(
                                    rstd * (g[i].g() * gamma[i].g() - mean_d - xhat * mean_dx),
                                );
                            }
                        }
                    },
                )
            });
        if !params {
            return (dx, None);
        }
        let (dgamma, dbeta) = x
            .par_chunks(h * 64)
            .zip(grad.par_chunks(h * 64))
            .map(|(xb, gb)| {
                let (mut dg, mut db) = (vec![0.0f64; h], vec![0.0f64; h]);
                for (x, g) in xb.chunks(h).zip(gb.chunks(h)) {
                    let (mean, rstd) = moments(x, self.eps);
                    for i in 0..h {
                        dg[i] += g[i].g() * (x[i].g() - mean) * rstd;
                        db[i] += g[i].g();
                    }
                }
                (dg, db)
            })
            .reduce(
                || (vec![0.0; h], vec![0.0; h]),
                |(mut ga, mut ba), (gb, bb)| {
                    ga.iter_mut().zip(gb).for_each(|(a, b)| *a += b);
                    ba.iter_mut().zip(bb).for_each(|(a, b)| *a += b);
                    (ga, ba)
                },
            );
        (
            dx,
            Some((
                dgamma.into_iter().map(T::f).collect(),
                dbeta.into_iter().map(T::f).collect(),
            )),
        )
    }
}

/// Σ_{i < n} f(i) in f64, in 8 partial sums (one AVX-512 register; a single accumulator is a
/// serial chain of dependent adds, which made the layer norm latency-bound).
#[inline(always)]
fn lane_sum(n: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let full = n / 8 * 8;
    for c in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(c + l);
        }
    }
    for i in full..n {
        acc[0] += f(i);
    }
    acc.iter().sum()
}

/// Mean and 1/sqrt(var + eps) of one row, accumulated in f64.
#[inline(always)]
fn moments<T: Float>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = lane_sum(x.len(), |i| x[i].g()) / n;
    let var = lane_sum(x.len(), |i| (x[i].g() - mean).powi(2)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = match x {
            CpuStorage::F32(_) => {
                CpuStorage::F32(self.forward(slice::<f32>(x, xl)?, slice(g, gl)?, slice(b, bl)?))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(self.forward(slice::<f64>(x, xl)?, slice(g, gl)?, slice(b, bl)?))
            }
            _ => candle_core::bail!("layer-norm: only f32 and f64"),
        };
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        macro_rules! run {
            ($t:ty) => {
                with_slice::<$t, _>(x, |xs| {
                    with_slice::<$t, _>(gamma, |gs| {
                        with_slice::<$t, _>(grad, |ds| {
                            let (dx, params) = self.backward(xs, gs, ds, true);
                            let (dg, db) = params.expect("asked for");
                            Ok((
                                Tensor::from_vec(dx, x.shape(), x.device())?,
                                Tensor::from_vec(dg, gamma.shape(), x.device())?,
                                Tensor::from_vec(db, beta.shape(), x.device())?,
                            ))
                        })
                    })
                })?
            };
        }
        let (dx, dg, db) = match x.dtype() {
            candle_core::DType::F32 => run!(f32),
            candle_core::DType::F64 => run!(f64),
            d => candle_core::bail!("layer-norm: unsupported dtype {d:?}"),
        };
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

// ---------------------------------------------------------------- softmax

/// `y = softmax(scale · x + mask)` of one row (the mask, if any, is added after scaling).
#[inline(always)]
pub(super) fn softmax_row<T: Float>(x: &[T], y: &mut [T], scale: T, mask: Option<&[T]>) {
    match mask {
        Some(mask) => {
            for ((y, &x), &m) in y.iter_mut().zip(x).zip(mask) {
                *y = x * scale + m;
            }
        }
        None => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * scale;
            }
        }
    }
    let max = lane_max(y);
    for v in y.iter_mut() {
        *v = (*v - max).exp();
    }
    let inv = T::one() / lane_dot(y, None);
    for v in y.iter_mut() {
        *v *= inv;
    }
}

// ---------------------------------------------------------------- GELU (erf)

/// GELU with the exact normal CDF, `x·Φ(x)`, with gradient `Φ(x) + x·φ(x)` in one pass each way
/// (candle's own backward for `gelu_erf` takes a dozen full-size passes).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op1_arc(std::sync::Arc::new(Box::new(GeluErf)))
}

struct GeluErf;

#[inline(always)]
fn normal_cdf<T: Float>(x: T) -> T {
    let half = T::f(0.5);
    half * (T::one() + (x * T::f(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

pub(crate) fn gelu_rows<T: Float>(x: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(y, x)| {
            vectorized(
                #[inline(always)]
                || {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = x * normal_cdf(x);
                    }
                },
            )
        });
    y
}

pub(crate) fn gelu_grad<T: Float>(x: &[T], grad: &[T]) -> Vec<T> {
    let inv_sqrt_2pi = T::f(0.398_942_280_401_432_7);
    let minus_half = T::f(-0.5);
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .zip(grad.par_chunks(4096))
        .for_each(|((dx, x), g)| {
            vectorized(
                #[inline(always)]
                || {
                    for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                        let density = inv_sqrt_2pi * (minus_half * x * x).exp();
                        *dx = g * (normal_cdf(x) + x * density);
                    }
                },
            )
        });
    dx
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = match x {
            CpuStorage::F32(_) => CpuStorage::F32(gelu_rows(slice::<f32>(x, layout)?)),
            CpuStorage::F64(_) => CpuStorage::F64(gelu_rows(slice::<f64>(x, layout)?)),
            _ => candle_core::bail!("gelu-erf: only f32 and f64"),
        };
        Ok((y, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = match x.dtype() {
            candle_core::DType::F32 => with_slice::<f32, _>(x, |xs| {
                with_slice::<f32, _>(grad, |g| {
                    Tensor::from_vec(gelu_grad(xs, g), x.shape(), x.device())
                })
            })?,
            candle_core::DType::F64 => with_slice::<f64, _>(x, |xs| {
                with_slice::<f64, _>(grad, |g| {
                    Tensor::from_vec(gelu_grad(xs, g), x.shape(), x.device())
                })
            })?,
            d => candle_core::bail!("gelu-erf: unsupported dtype {d:?}"),
        };
        Ok(Some(dx))
    }
}
