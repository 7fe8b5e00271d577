//! Hessian-vector products of the mean loss over a fixed evaluation set, from the project's own
//! exact gradient pass ([`crate::backprop::loss_and_gradients`]) by central differences:
//!
//!   H·v ≈ ‖v‖ · (g(θ + h·v̂) − g(θ − h·v̂)) / (2h),   v̂ = v / ‖v‖,
//!
//! with the step h taken along the unit vector, so the same h serves a unit Lanczos vector and a
//! Rademacher probe of norm √n. The error is O(h²) (the third derivative along v̂); rounding adds
//! about ε·‖g‖/h, which in f64 (the default) is negligible for h = 1e-3.
//!
//! The parameters are a [`Scope`]: blocks, each a whole tensor or a set of its flat indices (a
//! mask). The Hessian is that of the scope's block: only the scope moves, only its gradient is
//! read, and the backward pass stops at the lowest tensor in scope.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, Var};

use crate::backprop;
use crate::data::Batch;
use crate::model::{self, EncoderConfig, Increments, WeightMap};

/// One block of a scope: a tensor, whole (`indices = None`) or at the given flat indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub name: String,
    pub indices: Option<Vec<u32>>,
}

/// The parameters a Hessian is taken over, in a fixed order: block by block, each tensor's
/// entries in row-major order (or in its indices' order).
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub blocks: Vec<Block>,
}

impl Scope {
    /// Whole tensors.
    pub fn tensors(names: &[String]) -> Scope {
        Scope {
            blocks: names
                .iter()
                .map(|n| Block {
                    name: n.clone(),
                    indices: None,
                })
                .collect(),
        }
    }
}

/// The mean loss over a fixed set of batches, as a function of the model's weights.
pub struct Objective {
    config: EncoderConfig,
    num_labels: usize,
    /// The point θ, in the working float type.
    weights: WeightMap,
    batches: Vec<Batch>,
    examples: usize,
}

/// The gradient of the mean loss over the scope's parameters, and the loss.
#[derive(Debug, Clone)]
pub struct Gradient {
    pub loss: f64,
    pub values: Vec<f64>,
}

impl Objective {
    /// The mean loss of `batches` (every example weighs the same) at `weights`, computed in
    /// `dtype` (F64 or F32).
    pub fn new(
        config: &EncoderConfig,
        num_labels: usize,
        weights: &WeightMap,
        dtype: DType,
        batches: Vec<Batch>,
    ) -> Result<Objective> {
        ensure!(
            matches!(dtype, DType::F32 | DType::F64),
            "Hessian-vector products run in f32 or f64, not {dtype:?}"
        );
        let examples: usize = batches.iter().map(Batch::len).sum();
        ensure!(
            examples > 0,
            "the evaluation set is empty: no loss to differentiate"
        );
        let weights = weights
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.to_dtype(dtype)?)))
            .collect::<Result<WeightMap>>()?;
        Ok(Objective {
            config: config.clone(),
            num_labels,
            weights,
            batches,
            examples,
        })
    }

    pub fn examples(&self) -> usize {
        self.examples
    }

    /// The number of parameters of `scope`, after checking that its tensors exist, appear once,
    /// and that its indices are in range.
    pub fn dim(&self, scope: &Scope) -> Result<usize> {
        let mut seen = std::collections::BTreeSet::new();
        let mut n = 0;
        for b in &scope.blocks {
            ensure!(
                seen.insert(&b.name),
                "tensor {} appears twice in one scope",
                b.name
            );
            let numel = self
                .weights
                .get(&b.name)
                .with_context(|| format!("no tensor {} in the model", b.name))?
                .elem_count();
            n += match &b.indices {
                None => numel,
                Some(idx) => {
                    if let Some(bad) = idx.iter().find(|&&i| i as usize >= numel) {
                        bail!("index {bad} out of range for {} ({numel} entries)", b.name);
                    }
                    idx.len()
                }
            };
        }
        Ok(n)
    }

    /// The gradient over `scope` at θ + `shift` (a vector over the scope's parameters; none: θ).
    pub fn gradient(&self, scope: &Scope, shift: Option<&[f64]>) -> Result<Gradient> {
        let dtype = self.weights["embeddings.word_embeddings.weight"].dtype();
        let mut map = self.weights.clone();
        let mut vars = Vec::with_capacity(scope.blocks.len());
        let mut offset = 0;
        for b in &scope.blocks {
            let t = &self.weights[&b.name];
            let var = match shift {
                None => Var::from_tensor(t)?,
                Some(shift) => {
                    let mut flat: Vec<f64> = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
                    match &b.indices {
                        None => {
                            let s = &shift[offset..offset + flat.len()];
                            flat.iter_mut().zip(s).for_each(|(w, s)| *w += s);
                            offset += flat.len();
                        }
                        Some(idx) => {
                            for (&i, s) in idx.iter().zip(&shift[offset..offset + idx.len()]) {
                                flat[i as usize] += s;
                            }
                            offset += idx.len();
                        }
                    }
                    let moved = Tensor::from_vec(flat, t.shape(), t.device())?.to_dtype(dtype)?;
                    Var::from_tensor(&moved)?
                }
            };
            map.insert(b.name.clone(), var.as_tensor().clone());
            vars.push(var);
        }
        let classifier =
            model::build_classifier(&self.config, self.num_labels, &map, &Increments::new())?;
        let mut loss = 0.0;
        let mut sums: Vec<Vec<f64>> = Vec::with_capacity(vars.len());
        for batch in &self.batches {
            let weight = batch.len() as f64 / self.examples as f64;
            let (batch_loss, grads) = backprop::loss_and_gradients(
                &classifier,
                &batch.input_ids,
                &batch.token_type_ids,
                &batch.attention_mask,
                &batch.labels,
            )?;
            loss += weight * batch_loss;
            for (i, (b, var)) in scope.blocks.iter().zip(&vars).enumerate() {
                let g: Vec<f64> = grads
                    .get(var.as_tensor())
                    .with_context(|| format!("{} received no gradient", b.name))?
                    .flatten_all()?
                    .to_dtype(DType::F64)?
                    .to_vec1()?;
                let g: Vec<f64> = match &b.indices {
                    None => g,
                    Some(idx) => idx.iter().map(|&j| g[j as usize]).collect(),
                };
                match sums.get_mut(i) {
                    Some(sum) => sum.iter_mut().zip(&g).for_each(|(s, g)| *s += weight * g),
                    None => sums.push(g.into_iter().map(|g| weight * g).collect()),
                }
            }
        }
        let values: Vec<f64> = sums.into_iter().flatten().collect();
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            bail!("the gradient has a non-finite entry ({bad}): the loss is not finite here");
        }
        Ok(Gradient { loss, values })
    }
}

/// H·v over one scope by central differences of exact gradients, counting the products.
pub struct Hvp<'a> {
    objective: &'a Objective,
    scope: &'a Scope,
    dim: usize,
    /// The step h along the unit vector v̂.
    pub step: f64,
    pub products: usize,
}

impl<'a> Hvp<'a> {
    pub fn new(objective: &'a Objective, scope: &'a Scope, step: f64) -> Result<Hvp<'a>> {
        ensure!(
            step.is_finite() && step > 0.0,
            "--fd-step {step}: the finite-difference step must be a positive number"
        );
        let dim = objective.dim(scope)?;
        ensure!(dim > 0, "the scope has no parameters");
        Ok(Hvp {
            objective,
            scope,
            dim,
            step,
            products: 0,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// H·v.
    pub fn apply(&mut self, v: &[f64]) -> Result<Vec<f64>> {
        ensure!(
            v.len() == self.dim,
            "vector of {} entries for a scope of {}",
            v.len(),
            self.dim
        );
        self.products += 1;
        let r = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if r == 0.0 {
            return Ok(vec![0.0; self.dim]);
        }
        let h = self.step;
        let shift: Vec<f64> = v.iter().map(|x| h * x / r).collect();
        let plus = self.objective.gradient(self.scope, Some(&shift))?;
        let shift: Vec<f64> = shift.into_iter().map(|x| -x).collect();
        let minus = self.objective.gradient(self.scope, Some(&shift))?;
        let c = r / (2.0 * h);
        Ok(plus
            .values
            .iter()
            .zip(&minus.values)
            .map(|(p, m)| c * (p - m))
            .collect())
    }
}
