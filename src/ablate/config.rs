//! `analyses/*.toml` for `sift-lab ablate`: the paper item, its axes, the fixed train settings,
//! and presets (`quick`, `cpu`, `paper`) that override what they need.
//!
//! ```toml
//! item = "table4"                        # table2 | table4 | fig6: the layout of table.md
//! title = "Table 4: SIFT vs random by module set"
//! table_rows = ["method", "modules"]     # axes that name a row of table.md; columns are tasks
//! [train]                                # fixed settings of every cell (as `sift-lab train`)
//! epochs = 3
//! [per_task.sst2]                        # a task's own overrides (e.g. a training-set cap)
//! train_limit = 4000
//! [axes]
//! tasks = ["rte", "mrpc"]
//! methods = ["sift"]                     # full, head, sift, random, lora
//! modules = ["v", "q,v", "q,k,v", "q,k,v,o", "attention"]
//! budgets = [800000]                     # trainable parameters, the task head excluded
//! seeds = [1, 2, 3]
//! lr = { sift = [1e-3, 5e-3], random = [1e-3, 5e-3] }   # a sweep per method
//! [[paper]]                              # the paper's numbers, placed beside ours
//! method = "sift"; modules = "v"; task = "rte"; value = 85.9
//! [presets.quick]
//! train = { epochs = 1, train_limit = 24 }
//! axes = { seeds = [1] }
//! ```
//!
//! Every table refuses unknown keys; an error names the file, the line, the key and what is
//! allowed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::budget::Selection;
use crate::data::Task;
use crate::methods::MethodKind;
use crate::select;
use crate::selectors::Selector;

/// The paper items an ablation config can stand for (the layout of its table and figure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Item {
    /// GLUE: full / LoRA / SIFT per task.
    Table2,
    /// SIFT vs random by module set, RTE and MRPC, at a matched budget.
    Table4,
    /// MRPC: metric against trainable-parameter budget, one line per method.
    Fig6,
}

/// Train settings that are the same in every cell (unless a task overrides them). `None`:
/// the preset or the base config does not set it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    pub model: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub max_len: Option<usize>,
    pub warmup_ratio: Option<f64>,
    pub weight_decay: Option<f64>,
    pub max_grad_norm: Option<f64>,
    pub selection_batches: Option<usize>,
    pub selection: Option<Selection>,
    pub lora_alpha: Option<f64>,
    pub train_limit: Option<usize>,
    pub eval_limit: Option<usize>,
    pub log_every: Option<usize>,
}

impl TrainSettings {
    /// `self` with every key `over` sets replaced by its value.
    pub fn overridden_by(&self, over: &TrainSettings) -> TrainSettings {
        macro_rules! pick {
            ($($f:ident),*) => { TrainSettings { $($f: over.$f.clone().or_else(|| self.$f.clone())),* } };
        }
        pick!(
            model,
            data_dir,
            epochs,
            batch_size,
            max_len,
            warmup_ratio,
            weight_decay,
            max_grad_norm,
            selection_batches,
            selection,
            lora_alpha,
            train_limit,
            eval_limit,
            log_every
        )
    }
}

/// The axes of the grid as written in a file (each may be left to a preset).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AxesDoc {
    tasks: Option<Spanned<Vec<Task>>>,
    methods: Option<Spanned<Vec<MethodKind>>>,
    modules: Option<Spanned<Vec<String>>>,
    budgets: Option<Spanned<Vec<usize>>>,
    seeds: Option<Spanned<Vec<u64>>>,
    lr: Option<Spanned<BTreeMap<MethodKind, Vec<f64>>>>,
    selectors: Option<Spanned<Vec<Selector>>>,
}

impl AxesDoc {
    fn overridden_by(self, over: AxesDoc) -> AxesDoc {
        AxesDoc {
            tasks: over.tasks.or(self.tasks),
            methods: over.methods.or(self.methods),
            modules: over.modules.or(self.modules),
            budgets: over.budgets.or(self.budgets),
            seeds: over.seeds.or(self.seeds),
            lr: over.lr.or(self.lr),
            selectors: over.selectors.or(self.selectors),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetDoc {
    /// What the preset is for (shown in figures/README.md).
    description: Option<String>,
    #[serde(default)]
    train: TrainSettings,
    #[serde(default)]
    per_task: BTreeMap<Task, TrainSettings>,
    #[serde(default)]
    axes: AxesDoc,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    item: Item,
    title: String,
    table_rows: Option<Vec<RowAxis>>,
    #[serde(default)]
    train: TrainSettings,
    #[serde(default)]
    per_task: BTreeMap<Task, TrainSettings>,
    #[serde(default)]
    axes: AxesDoc,
    #[serde(default)]
    paper: Vec<PaperValue>,
    #[serde(default)]
    presets: BTreeMap<String, Spanned<PresetDoc>>,
}

/// The axes a row of table.md can be keyed by (columns are always the tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowAxis {
    Method,
    Modules,
    Budget,
    Selector,
}

/// One number from the paper, for the row and column it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperValue {
    pub task: Task,
    pub method: MethodKind,
    pub modules: Option<String>,
    pub budget: Option<usize>,
    /// The selection rule of the row (a selectors grid: the paper's SIFT is `gradient`, its
    /// random selection `random`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// In percent, as the paper prints it.
    pub value: f64,
}

/// The grid's axes, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Axes {
    pub tasks: Vec<Task>,
    pub methods: Vec<MethodKind>,
    /// Module sets (`--modules` values) of SIFT, random and LoRA.
    pub modules: Vec<String>,
    /// Target trainable parameters (task head excluded) of SIFT, random and LoRA.
    pub budgets: Vec<usize>,
    pub seeds: Vec<u64>,
    /// The learning rates swept per method.
    pub lr: BTreeMap<MethodKind, Vec<f64>>,
    /// The selection rules of SIFT cells (`gradient` alone unless a config lists others).
    #[serde(default = "default_selectors")]
    pub selectors: Vec<Selector>,
}

fn default_selectors() -> Vec<Selector> {
    vec![Selector::Gradient]
}

/// A config file with one preset applied: everything that decides the grid's numbers. Stored
/// in results.parquet and compared on `--resume` and merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblateConfig {
    pub item: Item,
    pub title: String,
    /// The config file's name (e.g. `table4-modules.toml`).
    pub source: String,
    pub preset: String,
    pub preset_description: Option<String>,
    pub table_rows: Vec<RowAxis>,
    pub train: TrainSettings,
    pub per_task: BTreeMap<Task, TrainSettings>,
    pub axes: Axes,
    /// `--random`: a random-selection cell beside every SIFT cell.
    pub random: bool,
    pub paper: Vec<PaperValue>,
}

/// The presets every config may define.
pub const PRESETS: [&str; 3] = ["quick", "cpu", "paper"];

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Loads `path` with `preset` applied (`None`: the base settings alone).
pub fn load(path: &Path, preset: Option<&str>) -> Result<AblateConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, path, preset)
}

/// Parses a config's text; `path` is only for messages.
pub fn parse(text: &str, path: &Path, preset: Option<&str>) -> Result<AblateConfig> {
    let file = path.display();
    // toml's message already holds the line, the column, the key and the allowed keys or
    // values ("unknown field `x`, expected one of ...").
    let doc: FileDoc = toml::from_str(text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let at = |span: std::ops::Range<usize>, key: &str, what: String| -> anyhow::Error {
        anyhow::anyhow!("{file}, line {}: {key}: {what}", line_of(text, span.start))
    };
    for (name, p) in &doc.presets {
        if !PRESETS.contains(&name.as_str()) {
            return Err(at(
                p.span(),
                &format!("presets.{name}"),
                format!("unknown preset; use {}", PRESETS.join(", ")),
            ));
        }
    }
    let (preset_name, chosen) = match preset {
        None => ("base".to_string(), PresetDoc::default()),
        Some(name) => match doc.presets.get(name) {
            Some(p) => (name.to_string(), p.get_ref().clone()),
            None => bail!(
                "{file}: no [presets.{name}] (it defines: {}); presets are {}",
                if doc.presets.is_empty() {
                    "none".to_string()
                } else {
                    doc.presets.keys().cloned().collect::<Vec<_>>().join(", ")
                },
                PRESETS.join(", ")
            ),
        },
    };
    let train = doc.train.overridden_by(&chosen.train);
    let mut per_task = doc.per_task.clone();
    for (task, over) in &chosen.per_task {
        let base = per_task.get(task).cloned().unwrap_or_default();
        per_task.insert(*task, base.overridden_by(over));
    }
    let axes = doc.axes.clone().overridden_by(chosen.axes.clone());
    let need = |name: &str| {
        anyhow::anyhow!(
            "{file}: [axes] has no `{name}` (nor does the preset {preset_name}); add e.g. {}",
            example(name)
        )
    };
    let tasks = axes.tasks.clone().ok_or_else(|| need("tasks"))?;
    let methods = axes.methods.clone().ok_or_else(|| need("methods"))?;
    let seeds = axes.seeds.clone().ok_or_else(|| need("seeds"))?;
    let lr = axes.lr.clone().ok_or_else(|| need("lr"))?;
    let sparse_or_lora = methods
        .get_ref()
        .iter()
        .any(|m| matches!(m, MethodKind::Sift | MethodKind::Random | MethodKind::Lora));
    let modules = match (&axes.modules, sparse_or_lora) {
        (Some(m), _) => m.clone(),
        (None, true) => return Err(need("modules")),
        (None, false) => Spanned::new(0..0, vec![]),
    };
    let budgets = match (&axes.budgets, sparse_or_lora) {
        (Some(b), _) => b.clone(),
        (None, true) => return Err(need("budgets")),
        (None, false) => Spanned::new(0..0, vec![]),
    };
    for (key, empty) in [
        ("axes.tasks", tasks.get_ref().is_empty()),
        ("axes.methods", methods.get_ref().is_empty()),
        ("axes.seeds", seeds.get_ref().is_empty()),
    ] {
        if empty {
            let span = match key {
                "axes.tasks" => tasks.span(),
                "axes.methods" => methods.span(),
                _ => seeds.span(),
            };
            return Err(at(span, key, "must list at least one value".into()));
        }
    }
    for spec in modules.get_ref() {
        check_modules(spec).map_err(|e| at(modules.span(), "axes.modules", e))?;
    }
    if budgets.get_ref().contains(&0) {
        return Err(at(
            budgets.span(),
            "axes.budgets",
            "a budget is a positive count of trainable parameters (task head excluded)".into(),
        ));
    }
    for method in methods.get_ref() {
        let rates = lr.get_ref().get(method);
        if rates.is_none_or(|r| r.is_empty()) {
            return Err(at(
                lr.span(),
                "axes.lr",
                format!(
                    "no learning rate for method {}; give e.g. {} = [1e-3]",
                    method_name(*method),
                    method_name(*method)
                ),
            ));
        }
    }
    for (method, rates) in lr.get_ref() {
        if let Some(bad) = rates.iter().find(|r| !(**r > 0.0 && r.is_finite())) {
            return Err(at(
                lr.span(),
                &format!("axes.lr.{}", method_name(*method)),
                format!("{bad} is not a positive learning rate"),
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in seeds.get_ref() {
        if !seen.insert(s) {
            return Err(at(
                seeds.span(),
                "axes.seeds",
                format!("seed {s} is listed twice"),
            ));
        }
    }
    let selectors = match &axes.selectors {
        Some(s) if s.get_ref().is_empty() => {
            return Err(at(
                s.span(),
                "axes.selectors",
                "must list at least one rule (gradient, fisher, magnitude-largest, magnitude-smallest, movement, random)".into(),
            ))
        }
        Some(s) => {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(twice) = s.get_ref().iter().find(|r| !seen.insert(**r)) {
                return Err(at(
                    s.span(),
                    "axes.selectors",
                    format!("{} is listed twice", twice.name()),
                ));
            }
            s.get_ref().clone()
        }
        None => default_selectors(),
    };
    let source = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(AblateConfig {
        item: doc.item,
        title: doc.title,
        source,
        preset: preset_name,
        preset_description: chosen.description.clone(),
        table_rows: doc
            .table_rows
            .clone()
            .unwrap_or_else(|| default_rows(doc.item)),
        train,
        per_task,
        axes: Axes {
            tasks: tasks.into_inner(),
            methods: methods.into_inner(),
            modules: modules.into_inner(),
            budgets: budgets.into_inner(),
            seeds: seeds.into_inner(),
            lr: lr.into_inner(),
            selectors,
        },
        random: false,
        paper: doc.paper,
    })
}

fn default_rows(item: Item) -> Vec<RowAxis> {
    match item {
        Item::Table2 => vec![RowAxis::Method],
        Item::Table4 => vec![RowAxis::Method, RowAxis::Modules],
        Item::Fig6 => vec![RowAxis::Method, RowAxis::Budget],
    }
}

fn example(name: &str) -> &'static str {
    match name {
        "tasks" => "tasks = [\"rte\", \"mrpc\"]",
        "methods" => "methods = [\"sift\", \"lora\"]",
        "seeds" => "seeds = [1, 2, 3]",
        "lr" => "lr = { sift = [1e-3], lora = [5e-4] }",
        "modules" => "modules = [\"q,k,v,o\"]",
        "budgets" => "budgets = [800000]",
        _ => "",
    }
}

/// A module set must name only modules `--modules` knows.
fn check_modules(spec: &str) -> Result<(), String> {
    let tokens: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() {
        return Err(format!("an empty module set; use {}", select::MODULE_SETS));
    }
    for t in tokens {
        if !["q", "k", "v", "o", "attention", "attn", "ffn", "all"].contains(&t) {
            return Err(format!(
                "unknown module {t:?} in {spec:?}; use {}",
                select::MODULE_SETS
            ));
        }
    }
    Ok(())
}

/// The method's name as the CLI and the configs write it.
pub fn method_name(method: MethodKind) -> &'static str {
    match method {
        MethodKind::Full => "full",
        MethodKind::Head => "head",
        MethodKind::Sift => "sift",
        MethodKind::Random => "random",
        MethodKind::Lora => "lora",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"item = "table4"
title = "t"
[train]
epochs = 3
[axes]
tasks = ["rte"]
methods = ["sift"]
modules = ["v", "q,k,v,o"]
budgets = [1000]
seeds = [1, 2]
lr = { sift = [1e-3] }
[presets.quick]
train = { epochs = 1, train_limit = 24 }
axes = { seeds = [7] }
"#;

    fn err(text: &str, preset: Option<&str>) -> String {
        format!(
            "{:#}",
            parse(text, Path::new("analyses/x.toml"), preset).unwrap_err()
        )
    }

    #[test]
    fn a_preset_overrides_only_what_it_sets() {
        let base = parse(BASE, Path::new("a/x.toml"), None).unwrap();
        assert_eq!(base.train.epochs, Some(3));
        assert_eq!(base.axes.seeds, vec![1, 2]);
        let quick = parse(BASE, Path::new("a/x.toml"), Some("quick")).unwrap();
        assert_eq!(quick.train.epochs, Some(1));
        assert_eq!(quick.train.train_limit, Some(24));
        assert_eq!(quick.axes.seeds, vec![7]);
        assert_eq!(quick.axes.modules, base.axes.modules);
        assert_eq!(
            (quick.source.as_str(), quick.preset.as_str()),
            ("x.toml", "quick")
        );
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        // An unknown key in [train], line 5.
        let text = BASE.replace("epochs = 3", "epochs = 3\nepoch = 4");
        let e = err(&text, None);
        assert!(
            e.contains("analyses/x.toml")
                && e.contains("line 5")
                && e.contains("epoch")
                && e.contains("expected one of"),
            "{e}"
        );
        // An unknown method lists the allowed ones.
        let e = err(
            &BASE.replace("methods = [\"sift\"]", "methods = [\"sifty\"]"),
            None,
        );
        assert!(
            e.contains("line 7") && e.contains("sifty") && e.contains("lora"),
            "{e}"
        );
        // An unknown module set, line 8.
        let e = err(&BASE.replace("\"q,k,v,o\"", "\"q,x\""), None);
        assert!(
            e.contains("line 8") && e.contains("axes.modules") && e.contains("\"x\""),
            "{e}"
        );
        // A method without a learning rate.
        let e = err(
            &BASE.replace("methods = [\"sift\"]", "methods = [\"sift\", \"lora\"]"),
            None,
        );
        assert!(
            e.contains("line 11") && e.contains("axes.lr") && e.contains("lora"),
            "{e}"
        );
        // A preset that is not defined, and one that is not allowed.
        let e = err(BASE, Some("paper"));
        assert!(
            e.contains("no [presets.paper]") && e.contains("quick"),
            "{e}"
        );
        let e = err(&format!("{BASE}[presets.fast]\n"), None);
        assert!(
            e.contains("line 15") && e.contains("presets.fast") && e.contains("quick, cpu, paper"),
            "{e}"
        );
        // A missing axis names what to add.
        let e = err(&BASE.replace("seeds = [1, 2]\n", ""), None);
        assert!(
            e.contains("no `seeds`") && e.contains("seeds = [1, 2, 3]"),
            "{e}"
        );
    }
}
