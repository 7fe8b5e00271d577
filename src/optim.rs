//! AdamW with per-parameter decay rules, the linear warmup / linear decay schedule, and global
//! gradient-norm clipping. State (two moments) exists only for the parameters it is given, so a
//! sparse method's optimizer holds k-sized tensors.

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

/// How AdamW's decoupled weight decay applies to a parameter.
#[derive(Debug, Clone)]
pub enum Decay {
    /// Biases, LayerNorm, and LoRA factors: no decay.
    None,
    /// Dense weights: p ← p − lr·wd·p.
    Plain,
    /// Sparse increments: the effective weights W[idx] + v decay, as full fine-tuning would
    /// decay them: v ← v − lr·wd·(W[idx] + v). `base` holds W[idx].
    Effective { base: Tensor },
}

/// One tensor the optimizer updates.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub decay: Decay,
}

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's and transformers' defaults.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct AdamW {
    params: Vec<Param>,
    first_moment: Vec<Tensor>,
    second_moment: Vec<Tensor>,
    steps: usize,
    config: AdamWConfig,
}

impl AdamW {
    pub fn new(params: Vec<Param>, config: AdamWConfig) -> Result<Self> {
        let zeros = |p: &Param| p.var.zeros_like();
        Ok(Self {
            first_moment: params
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            second_moment: params
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            params,
            steps: 0,
            config,
        })
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Bytes of optimizer state (both moments).
    pub fn state_bytes(&self) -> usize {
        self.first_moment
            .iter()
            .chain(&self.second_moment)
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// The tensors the optimizer holds (moments), for accounting and tests.
    pub fn state_tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.first_moment.iter().chain(&self.second_moment)
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The gradients of the parameters, in parameter order (zeros where none reached one).
    pub fn gradients(&self, grads: &GradStore) -> Result<Vec<Tensor>> {
        self.params
            .iter()
            .map(|p| {
                Ok(grads
                    .get(p.var.as_tensor())
                    .cloned()
                    .map_or_else(|| p.var.zeros_like(), Ok)?)
            })
            .collect()
    }

    /// One update with learning rate `lr` from `gradients` (as returned by [`Self::gradients`]).
    pub fn step(&mut self, gradients: &[Tensor], lr: f64) -> Result<()> {
        self.steps += 1;
        let c = self.config;
        let bias1 = 1.0 - c.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - c.beta2.powi(self.steps as i32);
        for (i, (param, grad)) in self.params.iter().zip(gradients).enumerate() {
            let base = match &param.decay {
                Decay::Effective { base } => Some(base),
                Decay::Plain | Decay::None => None,
            };
            let decay = match param.decay {
                Decay::None => 0.0,
                _ => c.weight_decay,
            };
            let value = param.var.as_tensor();
            if value.dtype() == DType::F32 {
                // One pass over (p, g, m, v), all updated in place: no copies, no allocations.
                let hyper = Hyper {
                    lr,
                    decay,
                    bias1,
                    bias2,
                    config: c,
                };
                fused_update(
                    value,
                    grad,
                    &self.first_moment[i],
                    &self.second_moment[i],
                    base,
                    hyper,
                )?;
                continue;
            }
            let m = ((&self.first_moment[i] * c.beta1)? + (grad * (1.0 - c.beta1))?)?;
            let v = ((&self.second_moment[i] * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bias1)? / ((&v / bias2)?.sqrt()? + c.eps)?)?;
            // Decoupled decay first, as torch.optim.AdamW: p ← p − lr·wd·p_effective.
            let decayed = match (base, decay > 0.0) {
                (None, true) => (value - (value * (lr * decay))?)?,
                (Some(base), true) => (value - ((base + value)? * (lr * decay))?)?,
                _ => value.clone(),
            };
            param.var.set(&(decayed - (update * lr)?)?)?;
            self.first_moment[i] = m;
            self.second_moment[i] = v;
        }
        Ok(())
    }

    /// Moments and step count, for resuming.
    /// Copies: the moments themselves are updated in place by later steps.
    pub fn state(&self) -> Result<(Vec<Tensor>, Vec<Tensor>, usize)> {
        let copy = |ts: &[Tensor]| ts.iter().map(|t| Ok(t.copy()?)).collect::<Result<Vec<_>>>();
        Ok((
            copy(&self.first_moment)?,
            copy(&self.second_moment)?,
            self.steps,
        ))
    }

    /// Takes copies: the moments are updated in place.
    pub fn restore(&mut self, first: Vec<Tensor>, second: Vec<Tensor>, steps: usize) -> Result<()> {
        let copy = |ts: Vec<Tensor>| {
            ts.iter()
                .map(|t| Ok(t.contiguous()?.copy()?))
                .collect::<Result<Vec<_>>>()
        };
        self.first_moment = copy(first)?;
        self.second_moment = copy(second)?;
        self.steps = steps;
        Ok(())
    }
}

/// Scales `gradients` so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_global_norm(gradients: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut squared = 0.0f64;
    for g in gradients.iter() {
        squared += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = squared.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in gradients.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

/// Linear warmup over `warmup` steps to `peak`, then linear decay to zero at `total`
/// (transformers' `get_linear_schedule_with_warmup`; `step` counts from 0).
pub fn linear_schedule(step: usize, warmup: usize, total: usize, peak: f64) -> f64 {
    if step < warmup {
        peak * step as f64 / warmup.max(1) as f64
    } else {
        peak * (total.saturating_sub(step)) as f64 / (total.saturating_sub(warmup)).max(1) as f64
    }
}

/// The scalars of one AdamW update.
#[derive(Clone, Copy)]
struct Hyper {
    lr: f64,
    decay: f64,
    bias1: f64,
    bias2: f64,
    config: AdamWConfig,
}

/// Runs `f` on the f32 contents of a contiguous CPU tensor, mutably (candle's in-place op).
/// The tensor must own its storage: the optimizer's moments and the parameters' `Var`s do.
fn with_mut_f32<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
    struct InPlace<F, R> {
        f: std::sync::Mutex<Option<F>>,
        out: std::sync::Mutex<Option<Result<R>>>,
    }
    impl<F: FnOnce(&mut [f32]) -> Result<R>, R> candle_core::InplaceOp1 for InPlace<F, R> {
        fn name(&self) -> &'static str {
            "adamw-in-place"
        }
        fn cpu_fwd(
            &self,
            storage: &mut candle_core::CpuStorage,
            layout: &candle_core::Layout,
        ) -> candle_core::Result<()> {
            let (start, end) = layout
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("adamw: non-contiguous state".into()))?;
            let candle_core::CpuStorage::F32(data) = storage else {
                candle_core::bail!("adamw: f32 state expected")
            };
            let f = self.f.lock().unwrap().take().expect("runs once");
            *self.out.lock().unwrap() = Some(f(&mut data[start..end]));
            Ok(())
        }
    }
    let op = InPlace {
        f: std::sync::Mutex::new(Some(f)),
        out: std::sync::Mutex::new(None),
    };
    t.inplace_op1(&op)?;
    let out = op.out.into_inner().unwrap();
    out.expect("the op ran")
}

/// Reads the f32 contents of a contiguous CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .context("adamw: non-contiguous tensor")?;
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else {
        anyhow::bail!("adamw: f32 CPU tensor expected")
    };
    f(&data[start..end])
}

/// One AdamW step of an f32 parameter, in place, element by element as the tensor-op path
/// computes it: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g²,
/// p ← p − lr·wd·(base + p) − lr·m̂/(√v̂ + ε).
fn fused_update(
    value: &Tensor,
    grad: &Tensor,
    first: &Tensor,
    second: &Tensor,
    base: Option<&Tensor>,
    h: Hyper,
) -> Result<()> {
    use rayon::prelude::*;
    let c = h.config;
    // 1 − β in f64: in f32, 1 − 0.999 keeps only 4 significant digits.
    let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
    let (one_minus_b1, one_minus_b2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
    let (lr, lr_decay) = (h.lr as f32, (h.lr * h.decay) as f32);
    let (inv_bias1, inv_bias2) = (1.0 / h.bias1 as f32, 1.0 / h.bias2 as f32);
    let grad = grad.contiguous()?;
    let base = base.map(|b| b.contiguous()).transpose()?;
    const CHUNK: usize = 1 << 14;
    with_f32(&grad, |g| {
        let update = |p: &mut [f32], m: &mut [f32], v: &mut [f32], base: Option<&[f32]>| {
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(chunk, (((p, m), v), g))| {
                    let base = base.map(|b| &b[chunk * CHUNK..chunk * CHUNK + p.len()]);
                    for j in 0..p.len() {
                        let gj = g[j];
                        let mj = b1 * m[j] + one_minus_b1 * gj;
                        let vj = b2 * v[j] + one_minus_b2 * gj * gj;
                        let step = (mj * inv_bias1) / ((vj * inv_bias2).sqrt() + eps);
                        let effective = base.map_or(p[j], |b| b[j] + p[j]);
                        let decayed = if lr_decay > 0.0 {
                            p[j] - effective * lr_decay
                        } else {
                            p[j]
                        };
                        p[j] = decayed - step * lr;
                        m[j] = mj;
                        v[j] = vj;
                    }
                });
        };
        with_mut_f32(value, |p| {
            with_mut_f32(first, |m| {
                with_mut_f32(second, |v| match &base {
                    Some(b) => with_f32(b, |b| {
                        update(p, m, v, Some(b));
                        Ok(())
                    }),
                    None => {
                        update(p, m, v, None);
                        Ok(())
                    }
                })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Two steps of AdamW on a scalar by hand (β1 = 0.9, β2 = 0.999, eps = 1e-8, lr = 0.1, wd = 0.1):
    /// step 1, g = 2: p = 1 − 0.1·0.1·1 = 0.99; m̂ = 2, v̂ = 4 → p = 0.99 − 0.1·2/2 = 0.89.
    /// step 2, g = 1: p = 0.89·(1 − 0.01) = 0.8811; m = 0.9·0.2 + 0.1 = 0.28, m̂ = 0.28/0.19;
    /// v = 0.999·0.004 + 0.001 = 0.004996, v̂ = 0.004996/0.001999; p −= 0.1·m̂/√v̂.
    /// A scalar variable of `dtype` and how to read it back as f64.
    fn scalar(value: f64, dtype: DType) -> Tensor {
        Tensor::new(&[value], &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }
    fn read(var: &Var) -> f64 {
        var.as_tensor()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[0]
    }

    /// f32 runs the one-pass kernel, f64 the tensor-op path: both must give the hand result.
    #[test]
    fn adamw_matches_the_hand_computation() {
        for (dtype, tol) in [(DType::F64, 1e-9), (DType::F32, 1e-6)] {
            adamw_by_hand(dtype, tol);
        }
    }

    fn adamw_by_hand(dtype: DType, tol: f64) {
        let var = Var::from_tensor(&scalar(1.0, dtype)).unwrap();
        let param = Param {
            name: "w".into(),
            var: var.clone(),
            decay: Decay::Plain,
        };
        let mut opt = AdamW::new(
            vec![param],
            AdamWConfig {
                weight_decay: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        opt.step(&[scalar(2.0, dtype)], 0.1).unwrap();
        let p1 = read(&var);
        assert!((p1 - 0.89).abs() < tol, "{dtype:?}: {p1}");
        opt.step(&[scalar(1.0, dtype)], 0.1).unwrap();
        let m_hat = 0.28 / 0.19;
        let v_hat = 0.004996 / (1.0 - 0.999f64.powi(2));
        let expect = 0.8811 - 0.1 * m_hat / (v_hat.sqrt() + 1e-8);
        let p2 = read(&var);
        assert!((p2 - expect).abs() < tol, "{dtype:?}: {p2} vs {expect}");
    }

    /// Decay of a sparse increment acts on the effective weight W[idx] + v.
    #[test]
    fn effective_decay_uses_the_base_weight() {
        for dtype in [DType::F64, DType::F32] {
            effective_decay(dtype);
        }
    }

    fn effective_decay(dtype: DType) {
        let var = Var::from_tensor(&scalar(0.0, dtype)).unwrap();
        let base = scalar(3.0, dtype);
        let param = Param {
            name: "d".into(),
            var: var.clone(),
            decay: Decay::Effective { base },
        };
        let mut opt = AdamW::new(
            vec![param],
            AdamWConfig {
                weight_decay: 0.5,
                ..Default::default()
            },
        )
        .unwrap();
        // Zero gradient: only decay moves it: v = 0 − 0.1·0.5·(3 + 0) = −0.15.
        opt.step(&[scalar(0.0, dtype)], 0.1).unwrap();
        assert!((read(&var) + 0.15).abs() < 1e-7, "{dtype:?}");
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(linear_schedule(0, 10, 100, 1.0), 0.0);
        assert_eq!(linear_schedule(5, 10, 100, 1.0), 0.5);
        assert_eq!(linear_schedule(10, 10, 100, 1.0), 1.0);
        assert_eq!(linear_schedule(55, 10, 100, 1.0), 0.5);
        assert_eq!(linear_schedule(100, 10, 100, 1.0), 0.0);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut grads = vec![
            Tensor::new(&[3.0f32], &Device::Cpu).unwrap(),
            Tensor::new(&[4.0f32], &Device::Cpu).unwrap(),
        ];
        let norm = clip_global_norm(&mut grads, 1.0).unwrap();
        assert_eq!(norm, 5.0);
        let a = grads[0].to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-5);
    }
}
