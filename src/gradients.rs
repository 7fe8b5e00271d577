//! The gradient loop, in one place: gradients of chosen tensors of one model, batch after
//! batch, on the training pass (the mean loss of each batch). SIFT's selection sums them over
//! its first batches ([`GradientSource::accumulate`]); grad-stats looks at each batch's own
//! ([`GradientSource::step`]), at fixed weights or along a fine-tuning run with sift-lab's
//! AdamW. Only the chosen (and, when training, the trainable) tensors are `Var`s; the rest are
//! constants, so the backward pass forms no other gradient.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use candle_core::Var;

use crate::backprop;
use crate::data::Batch;
use crate::model::{Pretrained, SequenceClassifier, WeightMap};
use crate::optim::{AdamW, AdamWConfig, Decay, Param};

/// The loss and the gradients of the chosen tensors on one batch.
#[derive(Debug, Clone)]
pub struct BatchGradients {
    pub loss: f64,
    /// Flattened (row-major) gradients, in the order of the chosen names.
    pub grads: Vec<Vec<f32>>,
}

/// Gradients of the chosen tensors of one model.
pub struct GradientSource {
    chosen: Vec<(String, Var)>,
    classifier: SequenceClassifier,
    /// With the learning rate: a fine-tuning run that updates after each gradient.
    optimizer: Option<(AdamW, f64)>,
}

impl GradientSource {
    /// Fixed weights: every `step` takes the gradient at the same point.
    pub fn frozen(pretrained: &Pretrained, weights: &WeightMap, chosen: &[String]) -> Result<Self> {
        Self::build(pretrained, weights, chosen, &[], None)
    }

    /// A fine-tuning run: every `step` takes the gradient, then updates the `trainable` tensors
    /// with AdamW (constant `lr`, no weight decay, no clipping).
    pub fn training(
        pretrained: &Pretrained,
        weights: &WeightMap,
        chosen: &[String],
        trainable: &[String],
        lr: f64,
    ) -> Result<Self> {
        Self::build(pretrained, weights, chosen, trainable, Some(lr))
    }

    fn build(
        pretrained: &Pretrained,
        weights: &WeightMap,
        chosen: &[String],
        trainable: &[String],
        lr: Option<f64>,
    ) -> Result<Self> {
        let mut vars: HashMap<String, Var> = HashMap::new();
        for name in chosen.iter().chain(trainable) {
            if !vars.contains_key(name) {
                let tensor = weights
                    .get(name)
                    .with_context(|| format!("no tensor {name} in the weights"))?;
                // from_tensor copies the storage: θ0 and θ1 (which share head tensors) and the
                // caller's map stay untouched by the updates.
                vars.insert(name.clone(), Var::from_tensor(tensor)?);
            }
        }
        let mut map = weights.clone();
        for (name, var) in &vars {
            map.insert(name.clone(), var.as_tensor().clone());
        }
        let classifier = pretrained.build(&map)?;
        let optimizer = match lr {
            Some(lr) => {
                let params = trainable
                    .iter()
                    .map(|n| Param {
                        name: n.clone(),
                        var: vars[n].clone(),
                        decay: Decay::None,
                    })
                    .collect();
                Some((AdamW::new(params, AdamWConfig::default())?, lr))
            }
            None => None,
        };
        let chosen = chosen
            .iter()
            .map(|n| (n.clone(), vars[n].clone()))
            .collect();
        Ok(GradientSource {
            chosen,
            classifier,
            optimizer,
        })
    }

    /// The gradient at the current weights on `batch`; when training, then the update.
    pub fn step(&mut self, batch: &Batch) -> Result<BatchGradients> {
        let (loss, grads) = backprop::loss_and_gradients(
            &self.classifier,
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
            &batch.labels,
        )?;
        let mut flat = Vec::with_capacity(self.chosen.len());
        for (name, var) in &self.chosen {
            let g = grads
                .get(var.as_tensor())
                .with_context(|| format!("{name} received no gradient on the training path"))?;
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            if let Some(bad) = g.iter().find(|v| !v.is_finite()) {
                bail!("the gradient of {name} has a non-finite entry ({bad})");
            }
            flat.push(g);
        }
        if let Some((optimizer, lr)) = &mut self.optimizer {
            let gradients = optimizer.gradients(&grads)?;
            optimizer.step(&gradients, *lr)?;
        }
        Ok(BatchGradients { loss, grads: flat })
    }

    /// The current values of the chosen tensors, flattened (row-major): after `step`s of a
    /// fine-tuning run, where the run has taken them.
    pub fn chosen_values(&self) -> Result<BTreeMap<String, Vec<f32>>> {
        self.chosen
            .iter()
            .map(|(name, var)| {
                let t = var.as_tensor().flatten_all()?;
                Ok((
                    name.clone(),
                    t.to_dtype(candle_core::DType::F32)?.to_vec1()?,
                ))
            })
            .collect()
    }

    /// The gradients summed over `batches` (element by element, in batch order), per chosen
    /// tensor. At least one batch is required.
    pub fn accumulate(
        &mut self,
        batches: impl Iterator<Item = Result<Batch>>,
    ) -> Result<BTreeMap<String, Vec<f32>>> {
        let mut sums: Option<Vec<Vec<f32>>> = None;
        for batch in batches {
            let step = self.step(&batch?)?;
            match &mut sums {
                None => sums = Some(step.grads),
                Some(sums) => {
                    for (sum, g) in sums.iter_mut().zip(&step.grads) {
                        sum.iter_mut().zip(g).for_each(|(s, x)| *s += x);
                    }
                }
            }
        }
        let sums = sums.context("no batch to take gradients on (the training split is empty)")?;
        Ok(self
            .chosen
            .iter()
            .map(|(name, _)| name.clone())
            .zip(sums)
            .collect())
    }
}
