//! Selection rules: which k entries of each targeted tensor a sparse method trains. Every rule
//! scores each entry (`score.rs`); one budgeted top-k (`budget::select_by_score`) turns scores
//! into masks, per tensor or globally, so the rules differ only in their scores.
//!
//! | rule | score of an entry | reads |
//! |---|---|---|
//! | gradient (the paper, default) | \|Σ_b g_b\| | s batch gradients at θ1 |
//! | fisher | Σ_b g_b² (batch-mean gradients) | the same s gradients |
//! | magnitude-largest | \|W\| | θ1 |
//! | magnitude-smallest | −\|W\| | θ1 |
//! | movement | \|θ_T − θ1\| | T steps of full fine-tuning, then rewound to θ1 (LT-SFT) |
//! | random | — (uniform draw from the seed, as `--method random`) | the seed |
//!
//! Fisher is taken over batch-mean gradients, not per-example ones: it then reads exactly the
//! gradient passes the gradient rule reads (same s batches, same cost), and the two differ only
//! where batch gradients cancel in the sum (|Σg| small, Σg² large). A per-example Fisher would
//! take B times as many backward passes. At s = 1 the two rules pick the same entries.
//!
//! `reselect.rs` moves a mask during training (SpIEL-style drop and regrow).

pub mod reselect;
pub mod score;

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::budget::{self, Selection};
use crate::data::Dataset;
use crate::methods::MethodKind;
use crate::model::Pretrained;
use score::{BatchPlan, GradientSums};

/// A selection rule.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Selector {
    /// Top-k |Σ G| over the selection batches (the paper's SIFT).
    #[default]
    Gradient,
    /// Top-k Σ g² over the selection batches (empirical Fisher of batch-mean gradients).
    Fisher,
    /// Top-k |W| of θ1.
    MagnitudeLargest,
    /// Bottom-k |W| of θ1.
    MagnitudeSmallest,
    /// Top-k |θ_T − θ1| after a short full fine-tuning warm-up, rewound to θ1 (LT-SFT).
    Movement,
    /// Uniform from the seed (the random baseline).
    Random,
}

impl Selector {
    pub const ALL: [Selector; 6] = [
        Selector::Gradient,
        Selector::Fisher,
        Selector::MagnitudeLargest,
        Selector::MagnitudeSmallest,
        Selector::Movement,
        Selector::Random,
    ];

    /// The name on the command line, in ids and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Selector::Gradient => "gradient",
            Selector::Fisher => "fisher",
            Selector::MagnitudeLargest => "magnitude-largest",
            Selector::MagnitudeSmallest => "magnitude-smallest",
            Selector::Movement => "movement",
            Selector::Random => "random",
        }
    }
}

/// How a sparse run picks (and, optionally, re-picks) its entries. The defaults are today's
/// SIFT: the gradient rule, no reselection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectorConfig {
    pub rule: Selector,
    /// Movement: warm-up steps of full fine-tuning.
    pub movement_steps: usize,
    /// Movement: the warm-up's constant learning rate.
    pub movement_lr: f64,
    /// Reselect every N steps (SpIEL-style); `None`: the mask stays fixed.
    pub reselect_every: Option<usize>,
    /// The fraction of the selected entries each reselection drops (and regrows).
    pub reselect_fraction: f64,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig {
            rule: Selector::Gradient,
            movement_steps: 20,
            movement_lr: 2e-5,
            reselect_every: None,
            reselect_fraction: 0.1,
        }
    }
}

impl SelectorConfig {
    /// Rejects settings that cannot run with `method`, naming the flag.
    pub fn validate(&self, method: MethodKind) -> Result<()> {
        let sparse = matches!(method, MethodKind::Sift | MethodKind::Random);
        if self.rule != Selector::Gradient && method != MethodKind::Sift {
            bail!(
                "--selector {} applies to --method sift (--method {} has no selection rule; --method random is --selector random)",
                self.rule.name(),
                format!("{method:?}").to_lowercase()
            );
        }
        if self.reselect_every.is_some() && !sparse {
            bail!("--reselect-every moves a sparse mask: use it with --method sift or random");
        }
        if self.rule == Selector::Movement && self.movement_steps == 0 {
            bail!("--movement-steps 0: the movement rule needs at least one warm-up step");
        }
        if !(self.movement_lr > 0.0 && self.movement_lr.is_finite()) {
            bail!(
                "--movement-lr {}: must be a positive number",
                self.movement_lr
            );
        }
        if self.reselect_every == Some(0) {
            bail!("--reselect-every 0: give a number of steps of at least 1 (or leave it out for a fixed mask)");
        }
        if !(self.reselect_fraction > 0.0 && self.reselect_fraction <= 1.0) {
            bail!(
                "--reselect-fraction {}: must be in (0, 1] (the fraction of selected entries dropped and regrown)",
                self.reselect_fraction
            );
        }
        Ok(())
    }
}

/// What every rule may read.
pub struct SelectionInputs<'a> {
    pub pretrained: &'a Pretrained,
    pub train: &'a Dataset,
    /// The targeted tensors.
    pub targets: &'a [String],
    pub rate: f64,
    pub selection: Selection,
    /// s: the batches the gradient rules sum over.
    pub batches: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub movement_steps: usize,
    pub movement_lr: f64,
}

/// Masks for several rules on the same inputs; the gradient pass is taken once, on demand.
pub struct Masks<'a> {
    inputs: SelectionInputs<'a>,
    sums: Option<GradientSums>,
}

impl<'a> Masks<'a> {
    pub fn new(inputs: SelectionInputs<'a>) -> Self {
        Masks { inputs, sums: None }
    }

    fn sums(&mut self) -> Result<&GradientSums> {
        if self.sums.is_none() {
            let i = &self.inputs;
            let plan = BatchPlan {
                train: i.train,
                batch_size: i.batch_size,
                seed: i.seed,
            };
            self.sums = Some(score::gradient_sums(
                i.pretrained,
                &plan,
                i.targets,
                i.batches,
            )?);
        }
        Ok(self.sums.as_ref().unwrap())
    }

    /// The rule's score per entry of every target; `None` for random, which draws.
    pub fn scores(&mut self, rule: Selector) -> Result<Option<BTreeMap<String, Vec<f32>>>> {
        let i = &self.inputs;
        Ok(Some(match rule {
            Selector::Gradient => score::gradient_scores(self.sums()?),
            Selector::Fisher => score::fisher_scores(self.sums()?),
            Selector::MagnitudeLargest | Selector::MagnitudeSmallest => score::magnitude_scores(
                &score::flat_values(&i.pretrained.weights, i.targets)?,
                rule == Selector::MagnitudeLargest,
            ),
            Selector::Movement => {
                let plan = BatchPlan {
                    train: i.train,
                    batch_size: i.batch_size,
                    seed: i.seed,
                };
                let theta_t = score::movement_warmup(
                    i.pretrained,
                    &plan,
                    i.targets,
                    i.movement_steps,
                    i.movement_lr,
                )?;
                score::movement_scores(
                    &score::flat_values(&i.pretrained.weights, i.targets)?,
                    &theta_t,
                )?
            }
            Selector::Random => return Ok(None),
        }))
    }

    /// The rule's mask: ascending flat indices per target, at the budget of `rate`.
    pub fn mask(&mut self, rule: Selector) -> Result<BTreeMap<String, Vec<u32>>> {
        let (rate, selection, seed) = (self.inputs.rate, self.inputs.selection, self.inputs.seed);
        match self.scores(rule)? {
            Some(scores) => Ok(budget::select_by_score(&scores, rate, selection)),
            None => {
                // The random baseline draws per tensor (the same total as a global budget).
                let shapes: Vec<(String, Vec<usize>)> = self
                    .inputs
                    .targets
                    .iter()
                    .map(|n| (n.clone(), self.inputs.pretrained.weights[n].dims().to_vec()))
                    .collect();
                Ok(budget::select_random(&shapes, rate, seed))
            }
        }
    }
}
