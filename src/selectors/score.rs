//! Each selection rule's score per entry (larger = picked first), as plain functions of what the
//! rule reads: gradients summed (and squared) over the selection batches, θ1, or θ after a short
//! fine-tuning warm-up. `super::select` turns scores into masks with the one budgeted top-k
//! (`budget::select_by_score`).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use crate::data::{BatchOrder, Dataset};
use crate::gradients::GradientSource;
use crate::model::{Pretrained, WeightMap};

/// Per tensor: Σ_b g_b and Σ_b g_b² over the selection batches, g_b the gradient of batch b's
/// mean loss at θ1 (one gradient pass serves both rules).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GradientSums {
    pub sum: BTreeMap<String, Vec<f32>>,
    pub sum_sq: BTreeMap<String, Vec<f32>>,
}

impl GradientSums {
    /// Adds one batch's gradients (in the order of `names`). The sum is formed as
    /// `GradientSource::accumulate` forms it (f32, batch order), so the gradient rule picks
    /// exactly the entries `train --method sift` always picked.
    pub fn add(&mut self, names: &[String], grads: &[Vec<f32>]) {
        for (name, g) in names.iter().zip(grads) {
            match self.sum.get_mut(name) {
                None => {
                    self.sum.insert(name.clone(), g.clone());
                    self.sum_sq
                        .insert(name.clone(), g.iter().map(|x| x * x).collect());
                }
                Some(sum) => {
                    sum.iter_mut().zip(g).for_each(|(s, x)| *s += x);
                    let sq = self.sum_sq.get_mut(name).unwrap();
                    sq.iter_mut().zip(g).for_each(|(s, x)| *s += x * x);
                }
            }
        }
    }
}

/// `gradient` (the paper): |Σ_b g_b|.
pub fn gradient_scores(sums: &GradientSums) -> BTreeMap<String, Vec<f32>> {
    map_values(&sums.sum, |g| g.abs())
}

/// `fisher`: Σ_b g_b², the empirical Fisher diagonal of the batch-mean gradients.
pub fn fisher_scores(sums: &GradientSums) -> BTreeMap<String, Vec<f32>> {
    sums.sum_sq.clone()
}

/// `magnitude-largest` (|W|) or `magnitude-smallest` (−|W|, so the top-k are the smallest).
pub fn magnitude_scores(
    weights: &BTreeMap<String, Vec<f32>>,
    largest: bool,
) -> BTreeMap<String, Vec<f32>> {
    map_values(weights, |w| if largest { w.abs() } else { -w.abs() })
}

/// `movement`: |θ_T − θ1| per entry.
pub fn movement_scores(
    theta1: &BTreeMap<String, Vec<f32>>,
    theta_t: &BTreeMap<String, Vec<f32>>,
) -> Result<BTreeMap<String, Vec<f32>>> {
    theta1
        .iter()
        .map(|(name, w1)| {
            let wt = theta_t
                .get(name)
                .with_context(|| format!("movement: no warmed-up value of {name}"))?;
            if wt.len() != w1.len() {
                bail!(
                    "movement: {name} has {} entries after the warm-up, {} before",
                    wt.len(),
                    w1.len()
                );
            }
            Ok((
                name.clone(),
                w1.iter().zip(wt).map(|(a, b)| (b - a).abs()).collect(),
            ))
        })
        .collect()
}

fn map_values(
    m: &BTreeMap<String, Vec<f32>>,
    f: impl Fn(f32) -> f32 + Copy,
) -> BTreeMap<String, Vec<f32>> {
    m.iter()
        .map(|(n, v)| (n.clone(), v.iter().map(|&x| f(x)).collect()))
        .collect()
}

/// The flattened values of `names` in `weights`.
pub fn flat_values(weights: &WeightMap, names: &[String]) -> Result<BTreeMap<String, Vec<f32>>> {
    names
        .iter()
        .map(|n| {
            let t = weights
                .get(n)
                .with_context(|| format!("no tensor {n} in the weights"))?;
            Ok((
                n.clone(),
                t.flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?,
            ))
        })
        .collect()
}

/// Where the gradient rules and the movement warm-up take their batches: the training split in
/// the order of epoch 0 from `seed` (the order training itself starts with), then epoch 1, …
pub struct BatchPlan<'a> {
    pub train: &'a Dataset,
    pub batch_size: usize,
    pub seed: u64,
}

/// Σ g and Σ g² at θ1 over the first `batches` batches of `plan`.
pub fn gradient_sums(
    pretrained: &Pretrained,
    plan: &BatchPlan,
    targets: &[String],
    batches: usize,
) -> Result<GradientSums> {
    let mut source = GradientSource::frozen(pretrained, &pretrained.weights, targets)?;
    let mut sums = GradientSums::default();
    let bar = crate::progress::bar(batches as u64, "batches");
    bar.set_message("selection gradients");
    let device = pretrained.device();
    for batch in first_epoch_batches(plan, batches, &device) {
        let step = source.step(&batch?)?;
        sums.add(targets, &step.grads);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if sums.sum.is_empty() {
        bail!("no batch to take gradients on (the training split is empty)");
    }
    Ok(sums)
}

/// The selection batches: the first `n` of epoch 0's order (as SIFT always took them; fewer
/// when the split is shorter).
fn first_epoch_batches<'a>(
    plan: &'a BatchPlan,
    n: usize,
    device: &'a candle_core::Device,
) -> impl Iterator<Item = Result<crate::data::Batch>> + 'a {
    plan.train
        .batches(
            plan.batch_size,
            BatchOrder::Shuffled {
                seed: plan.seed,
                epoch: 0,
            },
            device,
        )
        .take(n)
        .map(|b| b.map_err(anyhow::Error::from))
}

/// θ_T of `targets` after `steps` steps of full fine-tuning from θ1 (every tensor trainable,
/// the head included) with sift-lab's AdamW at a constant `lr`, no weight decay and no clipping,
/// on the first `steps` batches of `plan`. θ1 itself is left untouched (the rewind of LT-SFT:
/// the warm-up only decides the mask).
pub fn movement_warmup(
    pretrained: &Pretrained,
    plan: &BatchPlan,
    targets: &[String],
    steps: usize,
    lr: f64,
) -> Result<BTreeMap<String, Vec<f32>>> {
    if steps == 0 {
        bail!("--movement-steps 0: the movement rule needs at least one warm-up step");
    }
    if plan.train.is_empty() {
        bail!("movement warm-up: the training split has no example");
    }
    let mut all: Vec<String> = pretrained.weights.keys().cloned().collect();
    all.sort();
    let mut source = GradientSource::training(pretrained, &pretrained.weights, targets, &all, lr)?;
    let device = pretrained.device();
    let bar = crate::progress::bar(steps as u64, "steps");
    bar.set_message("movement warm-up");
    let mut done = 0;
    // Epoch 0's order, then epoch 1's, … until `steps` updates are made.
    'epochs: for epoch in 0u64.. {
        let order = BatchOrder::Shuffled {
            seed: plan.seed,
            epoch,
        };
        for batch in plan.train.batches(plan.batch_size, order, &device) {
            if done == steps {
                break 'epochs;
            }
            if crate::progress::interrupted() {
                bail!("interrupted during the movement warm-up");
            }
            source.step(&batch?)?;
            done += 1;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    source.chosen_values()
}
