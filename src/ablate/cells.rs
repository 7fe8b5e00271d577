//! The cells of an ablation grid: one `sift-lab train` run each, with a stable id, and with the
//! rate or LoRA rank that matches its budget.
//!
//! Order: seed outermost, then task, method, module set, budget, learning rate, so that a grid
//! run cell by cell over days completes a whole first seed before the second begins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::config::{method_name, AblateConfig};
use crate::budget::{self, Matched, Selection};
use crate::data::Task;
use crate::grid;
use crate::methods::MethodKind;
use crate::model::config::EncoderConfig;
use crate::model::weights::{expected_shapes, is_head};
use crate::selectors::{Selector, SelectorConfig};
use crate::{data, hub, select, train};

/// A cell whose matched count is further than this factor from its target is left out of the
/// grid (e.g. LoRA at 1 K parameters: rank 1 on q, k, v, o already trains 18 K).
pub const MAX_BUDGET_FACTOR: f64 = 2.0;

/// One cell: what it trains and the budget it achieves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellSpec {
    pub task: Task,
    pub method: MethodKind,
    /// The module set (SIFT, random, LoRA); `None` for full and head-only.
    pub modules: Option<String>,
    /// The target trainable count, task head excluded (`None` for full and head-only).
    pub budget: Option<usize>,
    /// The matched rate (SIFT, random).
    pub rate: Option<f64>,
    /// The matched rank (LoRA).
    pub lora_rank: Option<usize>,
    /// Trainable parameters the method will have, task head excluded (from the shapes).
    pub achieved: usize,
    pub lr: f64,
    pub seed: u64,
    /// The selection rule (SIFT cells; `gradient` for every other method).
    #[serde(default)]
    pub selector: Selector,
}

impl grid::Cell for CellSpec {
    fn id(&self) -> String {
        let mut id = format!(
            "task={},method={}",
            self.task.name(),
            method_name(self.method)
        );
        // Only a rule other than the paper's shows in the id, so ids (and folders) of grids
        // without a selectors axis stay what they were.
        if self.selector != Selector::Gradient {
            id.push_str(&format!(",selector={}", self.selector.name()));
        }
        if let Some(m) = &self.modules {
            id.push_str(&format!(",modules={}", module_key(m)));
        }
        if let Some(b) = self.budget {
            id.push_str(&format!(",budget={b}"));
        }
        id.push_str(&format!(",lr={:e},seed={}", self.lr, self.seed));
        id
    }
}

impl CellSpec {
    /// The cell's folder under `DIR/cells/`: its id with `_` between axes and `-` in each.
    pub fn dir_name(&self) -> String {
        grid::Cell::id(self).replace(',', "_").replace('=', "-")
    }

    /// (achieved − target) / target, or `None` without a target.
    pub fn budget_gap(&self) -> Option<f64> {
        self.budget
            .map(|b| (self.achieved as f64 - b as f64) / b as f64)
    }

    /// The `sift-lab train` configuration of this cell.
    pub fn train_config(&self, config: &AblateConfig, data_dir: &Path) -> train::TrainConfig {
        let s = config.train.overridden_by(
            config
                .per_task
                .get(&self.task)
                .unwrap_or(&Default::default()),
        );
        train::TrainConfig {
            model: s.model.clone().unwrap_or_else(|| hub::DEFAULT_MODEL.into()),
            task: self.task,
            data_dir: s.data_dir.clone().unwrap_or_else(|| data_dir.to_path_buf()),
            method: self.method,
            modules: self.modules.clone().unwrap_or_else(|| "q,k,v,o".into()),
            rate: self.rate.unwrap_or(0.01),
            selection_batches: s.selection_batches.unwrap_or(1),
            selection: s.selection.unwrap_or(Selection::PerTensor),
            lora_rank: self.lora_rank.unwrap_or(8),
            lora_alpha: s.lora_alpha.unwrap_or(16.0),
            epochs: s.epochs.unwrap_or(3),
            lr: self.lr,
            batch_size: s.batch_size.unwrap_or(32),
            max_len: s.max_len.unwrap_or(128),
            weight_decay: s.weight_decay.unwrap_or(0.0),
            warmup_ratio: s.warmup_ratio.unwrap_or(0.06),
            max_grad_norm: s.max_grad_norm.unwrap_or(1.0),
            seed: self.seed,
            train_limit: s.train_limit,
            eval_limit: s.eval_limit,
            log_every: s.log_every.unwrap_or(10),
            selector: SelectorConfig {
                rule: self.selector,
                ..Default::default()
            },
        }
    }
}

/// `q,k,v,o` → `q+k+v+o`: a module set inside an id, whose axes are separated by commas.
pub fn module_key(spec: &str) -> String {
    spec.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("+")
}

/// The tensors' shapes of `model`, encoder and head, read from its config.json alone.
pub fn model_shapes(model: &str, task: Task) -> Result<(EncoderConfig, Vec<(String, Vec<usize>)>)> {
    let files = hub::resolve(model)?;
    let config = EncoderConfig::load(&files.config)?;
    let shapes = expected_shapes(&config, task.num_labels())?;
    Ok((config, shapes))
}

/// The grid: every cell the config asks for, in order, and a note for each left out.
#[derive(Debug, Clone)]
pub struct Grid {
    pub cells: Vec<CellSpec>,
    pub notes: Vec<String>,
}

/// Expands `config` into cells, matching each budget (see [`match_budget`]).
pub fn expand(config: &AblateConfig) -> Result<Grid> {
    let model = config
        .train
        .model
        .clone()
        .unwrap_or_else(|| hub::DEFAULT_MODEL.into());
    let mut methods: Vec<MethodKind> = Vec::new();
    for &m in &config.axes.methods {
        if !methods.contains(&m) {
            methods.push(m);
        }
        if m == MethodKind::Sift && config.random && !methods.contains(&MethodKind::Random) {
            methods.push(MethodKind::Random);
        }
    }
    let mut cells = Vec::new();
    let mut notes = Vec::new();
    // Budget matching depends on the model's shapes, which depend on the task only through the
    // head; keep one per task.
    let mut shapes_by_task: BTreeMap<Task, (EncoderConfig, Vec<(String, Vec<usize>)>)> =
        BTreeMap::new();
    for &task in &config.axes.tasks {
        let task_model = config
            .per_task
            .get(&task)
            .and_then(|s| s.model.clone())
            .unwrap_or_else(|| model.clone());
        shapes_by_task.insert(task, model_shapes(&task_model, task)?);
    }
    for &seed in &config.axes.seeds {
        for &task in &config.axes.tasks {
            let (encoder, shapes) = &shapes_by_task[&task];
            for &method in &methods {
                let lrs = config
                    .axes
                    .lr
                    .get(&method)
                    .or_else(|| config.axes.lr.get(&MethodKind::Sift))
                    .with_context(|| {
                        format!("no learning rate for {} in [axes] lr", method_name(method))
                    })?;
                let settings: Vec<(Option<String>, Option<usize>, Option<Matched>)> = match method {
                    MethodKind::Full | MethodKind::Head => vec![(None, None, None)],
                    _ => {
                        let mut v = Vec::new();
                        for spec in &config.axes.modules {
                            for &target in &config.axes.budgets {
                                match match_budget(method, spec, target, encoder, shapes)? {
                                    Ok(m) => v.push((Some(spec.clone()), Some(target), Some(m))),
                                    Err(note) => {
                                        if seed == config.axes.seeds[0] {
                                            notes.push(format!("{}: {note}", task.name()));
                                        }
                                    }
                                }
                            }
                        }
                        v
                    }
                };
                for (modules, budget, matched) in settings {
                    let achieved = match (method, matched) {
                        (_, Some(m)) => m.count,
                        (MethodKind::Head, None) => 0,
                        _ => shapes
                            .iter()
                            .filter(|(n, _)| !is_head(n))
                            .map(|(_, s)| s.iter().product::<usize>())
                            .sum(),
                    };
                    let rules: &[Selector] = if method == MethodKind::Sift {
                        &config.axes.selectors
                    } else {
                        &[Selector::Gradient]
                    };
                    for (&lr, &selector) in
                        lrs.iter().flat_map(|lr| rules.iter().map(move |r| (lr, r)))
                    {
                        cells.push(CellSpec {
                            task,
                            method,
                            modules: modules.clone(),
                            budget,
                            rate: matched
                                .filter(|_| method != MethodKind::Lora)
                                .map(|m| m.setting),
                            lora_rank: matched
                                .filter(|_| method == MethodKind::Lora)
                                .map(|m| m.setting as usize),
                            achieved,
                            lr,
                            seed,
                            selector,
                        });
                    }
                }
            }
        }
    }
    // Run order (ids do not depend on it): within a seed and task, budget by budget and module
    // set by module set, every method side by side (SIFT, then its random twin, LoRA, ...), so a
    // grid stopped part-way already holds matched comparisons. A stable sort keeps the method and
    // learning-rate order of the loops above.
    let position = |axis: &[String], value: &Option<String>| {
        value.as_ref().map(|v| axis.iter().position(|a| a == v))
    };
    cells.sort_by_key(|c| {
        (
            config.axes.seeds.iter().position(|&s| s == c.seed),
            config.axes.tasks.iter().position(|&t| t == c.task),
            c.budget,
            position(&config.axes.modules, &c.modules),
        )
    });
    Ok(Grid { cells, notes })
}

/// The rate (SIFT, random) or rank (LoRA) whose trainable count, task head excluded, is closest
/// to `target` on the tensors of `spec`. `Ok(Err(note))`: the closest count is more than
/// [`MAX_BUDGET_FACTOR`] from the target, or LoRA cannot target the set.
pub fn match_budget(
    method: MethodKind,
    spec: &str,
    target: usize,
    encoder: &EncoderConfig,
    shapes: &[(String, Vec<usize>)],
) -> Result<std::result::Result<Matched, String>> {
    let targets = select::target_names(spec, encoder)?;
    let shape_of: BTreeMap<&str, &Vec<usize>> =
        shapes.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let target_shapes: Vec<&Vec<usize>> = targets
        .iter()
        .map(|n| shape_of.get(n.as_str()).copied().context("unknown tensor"))
        .collect::<Result<_>>()?;
    let matched = if method == MethodKind::Lora {
        let mut matrices = Vec::new();
        for (name, s) in targets.iter().zip(&target_shapes) {
            if s.len() != 2 || name.starts_with("embeddings.") {
                return Ok(Err(format!(
                    "lora on modules {spec:?} left out: {name} is not a linear weight"
                )));
            }
            matrices.push((s[0], s[1]));
        }
        budget::match_lora_rank(&matrices, target)
    } else {
        let numels: Vec<usize> = target_shapes.iter().map(|s| s.iter().product()).collect();
        budget::match_sparse_rate(&numels, target)
    };
    let factor = matched.count as f64 / target as f64;
    if !(1.0 / MAX_BUDGET_FACTOR..=MAX_BUDGET_FACTOR).contains(&factor) {
        return Ok(Err(format!(
            "{} on modules {spec:?} at budget {target} left out: the closest it gets is {} ({:.1}× the target)",
            method_name(method),
            matched.count,
            factor
        )));
    }
    Ok(Ok(matched))
}

/// Where the GLUE data is when the config does not say.
pub fn default_data_dir() -> Result<PathBuf> {
    data::glue_dir(None)
}
