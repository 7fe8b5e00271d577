//! Periodic reselection (SpIEL-style drop and regrow) of a sparse run's mask. Every N steps:
//! drop the fraction F of selected entries with the smallest |Δ| (they return to θ1, Δ = 0, and
//! their AdamW moments go), and regrow as many unselected entries with the largest |Σ g| of the
//! effective weight's gradient accumulated since the last reselection (they start at Δ = 0 with
//! zero moments). Per tensor (each tensor keeps its k) or globally (the total is kept); either
//! way the budget holds exactly. Entries selected before a reselection cannot be regrown by it,
//! so a dropped entry does not come straight back.
//!
//! The accumulated gradient is dense (one f32 per entry of each target): the price of regrowth,
//! as in SpIEL. It is read from the training pass itself: the targets' base weights enter it as
//! tracked constants (θ1, never updated), so the pass forms dW_eff beside the k sampled products.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use crate::budget::{self, Selection};
use crate::methods::FineTuning;
use crate::model::{EffectiveWeights, WeightMap};
use crate::optim::{AdamW, AdamWConfig};
use crate::output;

/// One tensor's share of one reselection (a row of `selection.parquet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReselectionRow {
    /// The optimizer step after which it happened.
    pub step: usize,
    pub tensor: String,
    /// Entries selected after it.
    pub selected: usize,
    /// Flat indices dropped and regrown (ascending).
    pub dropped: Vec<u32>,
    pub regrown: Vec<u32>,
    /// Entries of the mask after it that were in the mask training started with.
    pub kept_from_initial: usize,
    /// Entries of the initial mask.
    pub initial: usize,
}

/// Which entries one reselection drops and regrows, per tensor (ascending flat indices).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub dropped: BTreeMap<String, Vec<u32>>,
    pub regrown: BTreeMap<String, Vec<u32>>,
}

impl Plan {
    /// The masks after the plan: (selected − dropped) ∪ regrown, ascending.
    pub fn apply(&self, selected: &BTreeMap<String, Vec<u32>>) -> BTreeMap<String, Vec<u32>> {
        selected
            .iter()
            .map(|(name, mask)| {
                let dropped = &self.dropped[name];
                let mut new: Vec<u32> = mask
                    .iter()
                    .copied()
                    .filter(|i| dropped.binary_search(i).is_err())
                    .chain(self.regrown[name].iter().copied())
                    .collect();
                new.sort_unstable();
                (name.clone(), new)
            })
            .collect()
    }
}

/// ⌊F · n⌋ (nudged as `budget::budget` is, so 0.1 · 30 is 3).
fn fraction_of(fraction: f64, n: usize) -> usize {
    ((fraction * n as f64 * (1.0 + 1e-12)).floor() as usize).min(n)
}

/// What to drop and regrow: `selected` the masks, `delta` the values Δ at them (same order),
/// `accumulated` Σ g per entry of each tensor since the last reselection.
pub fn plan(
    selected: &BTreeMap<String, Vec<u32>>,
    delta: &BTreeMap<String, Vec<f32>>,
    accumulated: &BTreeMap<String, Vec<f32>>,
    fraction: f64,
    selection: Selection,
) -> Result<Plan> {
    // Drop scores −|Δ| (the top-k are the smallest |Δ|), over positions in each mask; regrow
    // scores |Σ g| with the selected entries at NaN, which ranks below everything.
    let mut drop_scores = BTreeMap::new();
    let mut grow_scores = BTreeMap::new();
    for (name, mask) in selected {
        let d = delta
            .get(name)
            .with_context(|| format!("reselection: no Δ of {name}"))?;
        let acc = accumulated
            .get(name)
            .with_context(|| format!("reselection: no accumulated gradient of {name}"))?;
        if d.len() != mask.len() {
            bail!(
                "reselection: {name} has {} values for {} entries",
                d.len(),
                mask.len()
            );
        }
        drop_scores.insert(
            name.clone(),
            d.iter().map(|v| -v.abs()).collect::<Vec<f32>>(),
        );
        let mut grow: Vec<f32> = acc.iter().map(|g| g.abs()).collect();
        for &i in mask {
            grow[i as usize] = f32::NAN;
        }
        grow_scores.insert(name.clone(), grow);
    }
    let unselected = |name: &str| accumulated[name].len() - selected[name].len();
    let (drop_positions, regrown) = match selection {
        Selection::PerTensor => {
            let mut drops = BTreeMap::new();
            let mut grows = BTreeMap::new();
            for name in selected.keys() {
                let n = fraction_of(fraction, selected[name].len()).min(unselected(name));
                drops.insert(name.clone(), budget::top_k_by_score(&drop_scores[name], n));
                grows.insert(name.clone(), budget::top_k_by_score(&grow_scores[name], n));
            }
            (drops, grows)
        }
        Selection::Global => {
            let total: usize = selected.values().map(Vec::len).sum();
            let free: usize = selected.keys().map(|n| unselected(n)).sum();
            let n = fraction_of(fraction, total).min(free);
            (
                budget::global_top_by_score(&drop_scores, n),
                budget::global_top_by_score(&grow_scores, n),
            )
        }
    };
    let dropped = drop_positions
        .into_iter()
        .map(|(name, positions)| {
            let mask = &selected[&name];
            let mut flat: Vec<u32> = positions.iter().map(|&p| mask[p as usize]).collect();
            flat.sort_unstable();
            (name, flat)
        })
        .collect();
    Ok(Plan { dropped, regrown })
}

/// The settings of a run's reselection.
#[derive(Debug, Clone, Copy)]
pub struct ReselectSettings {
    pub every: usize,
    pub fraction: f64,
    pub selection: Selection,
    /// The run's AdamW settings, for the optimizer rebuilt after each reselection.
    pub adamw: AdamWConfig,
}

/// A run's reselection state: the accumulated gradients, the tracked base weights, the initial
/// masks and the log.
pub struct Reselection {
    settings: ReselectSettings,
    /// θ1 of each target as a tracked tensor, so the training pass forms its dense gradient.
    probes: BTreeMap<String, Var>,
    accumulated: BTreeMap<String, Vec<f32>>,
    initial: BTreeMap<String, Vec<u32>>,
    pub log: Vec<ReselectionRow>,
}

const STATE_PREFIX: &str = "reselection-";

fn state_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("{STATE_PREFIX}{step}.safetensors"))
}

impl Reselection {
    /// Starts reselection for `method` (sparse, linear-weight targets only); on resume, from the
    /// state saved at `resume_step` in `state_dir`.
    pub fn start(
        settings: ReselectSettings,
        method: &FineTuning,
        base: &WeightMap,
        resume: Option<(&Path, usize)>,
    ) -> Result<Reselection> {
        let selected = method.selected_indices()?;
        if selected.is_empty() {
            bail!("--reselect-every: only --method sift or random have a mask to reselect");
        }
        let mut probes = BTreeMap::new();
        let mut accumulated = BTreeMap::new();
        for name in selected.keys() {
            if !method.is_linear_target(name) {
                bail!("--reselect-every: {name} is not a linear weight; reselection takes --modules of weight matrices (q, k, v, o, ffn)");
            }
            let w = &base[name];
            probes.insert(name.clone(), Var::from_tensor(w)?);
            accumulated.insert(name.clone(), vec![0f32; w.elem_count()]);
        }
        let mut state = Reselection {
            settings,
            probes,
            accumulated,
            initial: selected,
            log: Vec::new(),
        };
        if let Some((dir, step)) = resume {
            state.restore(dir, step)?;
        }
        Ok(state)
    }

    /// Puts the tracked base weights into `weights`, so the pass forms dW_eff of each target.
    pub fn track(&self, weights: &mut EffectiveWeights) {
        for (name, probe) in &self.probes {
            weights
                .weights
                .insert(name.clone(), probe.as_tensor().clone());
        }
    }

    /// Adds one step's dense gradients (from a pass over weights given to [`Self::track`]).
    pub fn observe(&mut self, grads: &GradStore) -> Result<()> {
        for (name, probe) in &self.probes {
            let g = grads.get(probe.as_tensor()).with_context(|| {
                format!("reselection: the training pass formed no gradient of {name}")
            })?;
            let g: Vec<f32> = g
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?;
            add_into(self.accumulated.get_mut(name).unwrap(), &g, name)?;
        }
        Ok(())
    }

    /// Adds a gradient of the target `name` (flat, row-major) to its accumulated sum.
    pub fn add_gradient(&mut self, name: &str, g: &[f32]) -> Result<()> {
        let acc = self
            .accumulated
            .get_mut(name)
            .with_context(|| format!("reselection: {name} is not a target"))?;
        add_into(acc, g, name)
    }

    /// The masks training started with (restored on resume).
    pub fn initial(&self) -> &BTreeMap<String, Vec<u32>> {
        &self.initial
    }

    /// After optimizer step `step`: reselects when it is due, moving the mask of `method` and
    /// rebuilding `optimizer` with the moments of kept entries (zeros for regrown ones).
    pub fn after_step(
        &mut self,
        step: usize,
        method: &mut FineTuning,
        optimizer: &mut AdamW,
    ) -> Result<()> {
        if !step.is_multiple_of(self.settings.every) {
            return Ok(());
        }
        let selected = method.selected_indices()?;
        let plan = plan(
            &selected,
            &method.sparse_values()?,
            &self.accumulated,
            self.settings.fraction,
            self.settings.selection,
        )?;
        let new = plan.apply(&selected);
        let moved = method.move_mask(&new)?;
        *optimizer = carry_optimizer(optimizer, method, &moved, self.settings.adamw)?;
        for (name, mask) in &new {
            let initial = &self.initial[name];
            self.log.push(ReselectionRow {
                step,
                tensor: name.clone(),
                selected: mask.len(),
                dropped: plan.dropped[name].clone(),
                regrown: plan.regrown[name].clone(),
                kept_from_initial: crate::grad_stats::math::intersection_count(mask, initial),
                initial: initial.len(),
            });
        }
        self.accumulated.values_mut().for_each(|a| a.fill(0.0));
        Ok(())
    }

    /// Writes the state at `step` into `dir` (before the run's checkpoint, which names the step).
    pub fn save(&self, dir: &Path, step: usize) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, acc) in &self.accumulated {
            tensors.push((
                format!("accumulated/{name}"),
                Tensor::from_slice(acc, acc.len(), &Device::Cpu)?,
            ));
        }
        for (name, mask) in &self.initial {
            tensors.push((
                format!("initial/{name}"),
                Tensor::from_slice(mask, mask.len(), &Device::Cpu)?,
            ));
        }
        let meta = std::collections::HashMap::from([(
            "log".to_string(),
            serde_json::to_string(&self.log)?,
        )]);
        let path = state_path(dir, step);
        let tmp = path.with_extension("partial");
        safetensors::serialize_to_file(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            Some(meta),
            &tmp,
        )
        .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Removes the states of other steps (after the checkpoint at `step` is complete).
    pub fn prune(dir: &Path, step: usize) -> Result<()> {
        let keep = state_path(dir, step);
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let is_state = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(STATE_PREFIX));
            if is_state && path != keep {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    fn restore(&mut self, dir: &Path, step: usize) -> Result<()> {
        let path = state_path(dir, step);
        if !path.exists() {
            bail!("--resume: {} is missing (the reselection state of the checkpoint at step {step}); remove {} to start over", path.display(), dir.display());
        }
        let bytes = std::fs::read(&path)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let log = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("log").cloned())
            .with_context(|| format!("{}: no reselection log", path.display()))?;
        self.log = serde_json::from_str(&log)?;
        let tensors = crate::model::weights::read_safetensors(&path, &Device::Cpu)?;
        for (name, acc) in self.accumulated.iter_mut() {
            let t = tensors
                .get(&format!("accumulated/{name}"))
                .with_context(|| {
                    format!("{}: no accumulated gradient of {name}", path.display())
                })?;
            *acc = t.to_vec1()?;
        }
        for (name, mask) in self.initial.iter_mut() {
            let t = tensors
                .get(&format!("initial/{name}"))
                .with_context(|| format!("{}: no initial mask of {name}", path.display()))?;
            *mask = t.to_vec1()?;
        }
        Ok(())
    }

    /// Writes `selection.parquet`: one row per tensor and reselection.
    pub fn write_log(&self, path: &Path) -> Result<()> {
        let rows = &self.log;
        let list = |f: &dyn Fn(&ReselectionRow) -> &Vec<u32>| -> Vec<polars::prelude::Series> {
            rows.iter()
                .map(|r| {
                    <polars::prelude::Series as polars::prelude::NamedFrom<_, _>>::new(
                        "".into(),
                        f(r).as_slice(),
                    )
                })
                .collect()
        };
        let columns = vec![
            output::column_of("step", rows, |r| r.step as u32),
            output::column_of("tensor", rows, |r| r.tensor.as_str()),
            output::column_of("selected", rows, |r| r.selected as u32),
            output::column_of("dropped", rows, |r| r.dropped.len() as u32),
            output::column_of("regrown", rows, |r| r.regrown.len() as u32),
            output::column_of("kept_from_initial", rows, |r| r.kept_from_initial as u32),
            output::column_of("initial", rows, |r| r.initial as u32),
            Column::new("dropped_indices".into(), list(&|r| &r.dropped)),
            Column::new("regrown_indices".into(), list(&|r| &r.regrown)),
        ];
        let mut df = DataFrame::new_infer_height(columns)?;
        output::write_parquet(&mut df, path, &[])
    }
}

fn add_into(acc: &mut [f32], g: &[f32], name: &str) -> Result<()> {
    if acc.len() != g.len() {
        bail!(
            "reselection: a gradient of {name} has {} entries, the tensor {}",
            g.len(),
            acc.len()
        );
    }
    acc.iter_mut().zip(g).for_each(|(a, x)| *a += x);
    Ok(())
}

/// A new optimizer over `method`'s parameters after its mask moved: the same step count; each
/// moved target's moments follow its kept entries, zero for new ones; other moments as they were.
pub fn carry_optimizer(
    old: &AdamW,
    method: &FineTuning,
    moved: &BTreeMap<String, Vec<Option<usize>>>,
    config: AdamWConfig,
) -> Result<AdamW> {
    let (first, second, steps) = old.state()?;
    let by_name: BTreeMap<&str, usize> = old
        .params()
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let params = method.params()?;
    let (mut new_first, mut new_second) = (Vec::new(), Vec::new());
    for p in &params {
        let i = *by_name
            .get(p.name.as_str())
            .with_context(|| format!("reselection: {} has no optimizer state", p.name))?;
        let target = p.name.strip_suffix(".delta").and_then(|t| moved.get(t));
        match target {
            None => {
                new_first.push(first[i].clone());
                new_second.push(second[i].clone());
            }
            Some(from) => {
                let follow = |m: &Tensor| -> Result<Tensor> {
                    let old: Vec<f32> = m.to_dtype(candle_core::DType::F32)?.to_vec1()?;
                    let new: Vec<f32> = from.iter().map(|p| p.map_or(0.0, |p| old[p])).collect();
                    Ok(Tensor::from_vec(new, from.len(), m.device())?.to_dtype(m.dtype())?)
                };
                new_first.push(follow(&first[i])?);
                new_second.push(follow(&second[i])?);
            }
        }
    }
    let mut optimizer = AdamW::new(params, config)?;
    optimizer.restore(new_first, new_second, steps)?;
    Ok(optimizer)
}

/// The file of a run directory that logs every reselection.
pub const SELECTION_FILE: &str = "selection.parquet";

/// A `train` run's reselection, if its settings ask for one (`--reselect-every`), with the run's
/// selection and weight decay; on resume from the state saved with the checkpoint at `resume`'s
/// step.
pub fn start_for(
    selector: &super::SelectorConfig,
    selection: Selection,
    weight_decay: f64,
    method: &FineTuning,
    base: &WeightMap,
    resume: Option<(&Path, usize)>,
) -> Result<Option<Reselection>> {
    let Some(every) = selector.reselect_every else {
        return Ok(None);
    };
    let settings = ReselectSettings {
        every,
        fraction: selector.reselect_fraction,
        selection,
        adamw: AdamWConfig {
            weight_decay,
            ..Default::default()
        },
    };
    Reselection::start(settings, method, base, resume).map(Some)
}
