//! From results to what the paper prints: per row of the table and task, the mean ± std over
//! seeds of the best-epoch dev metric at the swept learning rate with the highest mean; the
//! paper's value beside it. `table.md` and the Fig. 6 figure are drawn from these summaries.

use std::collections::BTreeMap;

use super::config::{AblateConfig, RowAxis};
use super::results::{method_label, task_label, ResultRow};
use crate::data::Task;
use crate::methods::MethodKind;
use crate::plot::budget::{BandLine, BudgetFigure, FlatBand};

/// What a row of the table is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowKey {
    pub method: Option<MethodKind>,
    pub modules: Option<String>,
    pub budget: Option<usize>,
    pub selector: Option<crate::selectors::Selector>,
}

impl RowKey {
    fn of(row: &ResultRow, axes: &[RowAxis]) -> RowKey {
        RowKey {
            method: axes.contains(&RowAxis::Method).then_some(row.cell.method),
            modules: if axes.contains(&RowAxis::Modules) {
                row.cell.modules.clone()
            } else {
                None
            },
            budget: if axes.contains(&RowAxis::Budget) {
                row.cell.budget
            } else {
                None
            },
            selector: axes
                .contains(&RowAxis::Selector)
                .then_some(row.cell.selector),
        }
    }
}

/// One learning rate of one (row, task): the seeds' values.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSummary {
    pub lr: f64,
    /// Best-epoch primary metric of each completed seed, in percent.
    pub best: Vec<f64>,
    /// Last-epoch primary metric of each completed seed, in percent.
    pub last: Vec<f64>,
    pub diverged: usize,
    /// Trainable parameters without the head (the same for every seed).
    pub achieved: usize,
}

/// Mean and sample standard deviation (None for fewer than two values); None for no values.
pub fn mean_std(values: &[f64]) -> Option<(f64, Option<f64>)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.len() >= 2)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    Some((mean, std))
}

/// The table's content: rows in first-appearance order, each with per-task, per-lr summaries.
#[derive(Debug, Clone)]
pub struct Summaries {
    pub rows: Vec<RowKey>,
    pub tasks: Vec<Task>,
    pub cells: BTreeMap<(RowKey, Task), Vec<LrSummary>>,
}

impl Summaries {
    pub fn new(config: &AblateConfig, results: &[ResultRow]) -> Summaries {
        let mut rows: Vec<RowKey> = Vec::new();
        let mut cells: BTreeMap<(RowKey, Task), Vec<LrSummary>> = BTreeMap::new();
        for r in results {
            let key = RowKey::of(r, &config.table_rows);
            if !rows.contains(&key) {
                rows.push(key.clone());
            }
            let lrs = cells.entry((key, r.cell.task)).or_default();
            let pos = match lrs.iter().position(|s| s.lr == r.cell.lr) {
                Some(p) => p,
                None => {
                    lrs.push(LrSummary {
                        lr: r.cell.lr,
                        best: vec![],
                        last: vec![],
                        diverged: 0,
                        achieved: r.achieved_budget,
                    });
                    lrs.len() - 1
                }
            };
            let s = &mut lrs[pos];
            match (r.status.as_str(), r.best_primary()) {
                ("completed", Some(best)) => {
                    s.best.push(100.0 * best);
                    if let Some(last) = r.last.get(&r.primary_metric) {
                        s.last.push(100.0 * last);
                    }
                }
                _ => s.diverged += 1,
            }
        }
        for lrs in cells.values_mut() {
            lrs.sort_by(|a, b| a.lr.total_cmp(&b.lr));
        }
        let tasks: Vec<Task> = config
            .axes
            .tasks
            .iter()
            .copied()
            .filter(|t| cells.keys().any(|(_, task)| task == t))
            .collect();
        Summaries { rows, tasks, cells }
    }

    /// The learning rate with the highest mean best-epoch metric (ties: the smaller rate).
    pub fn chosen(&self, key: &RowKey, task: Task) -> Option<&LrSummary> {
        let lrs = self.cells.get(&(key.clone(), task))?;
        let mut best: Option<(&LrSummary, f64)> = None;
        for s in lrs {
            if let Some((mean, _)) = mean_std(&s.best) {
                if best.is_none_or(|(_, m)| mean > m) {
                    best = Some((s, mean));
                }
            }
        }
        best.map(|(s, _)| s)
    }
}

fn with_commas(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `q,k,v,o` → `W_q,k,v,o`; `attention` → `W_all` (the paper's: attention weights and biases).
pub fn modules_label(spec: &str) -> String {
    match spec {
        "attention" | "attn" => "W_all".into(),
        "all" => "every tensor".into(),
        "ffn" => "W_ffn".into(),
        s => format!("W_{}", s.replace(' ', "")),
    }
}

fn value_text(values: &[f64]) -> String {
    match mean_std(values) {
        None => "–".into(),
        Some((m, Some(s))) => format!("{m:.1} ± {s:.1}"),
        Some((m, None)) => format!("{m:.1}"),
    }
}

fn lr_text(lr: f64) -> String {
    format!("{lr:e}")
}

/// table.md: the paper's layout, ours beside the paper's, then every learning rate of the sweep.
pub fn markdown(config: &AblateConfig, results: &[ResultRow]) -> String {
    let sums = Summaries::new(config, results);
    let mut out = String::new();
    let metric = results
        .first()
        .map(|r| r.primary_metric.clone())
        .unwrap_or_else(|| "accuracy".into());
    let seeds = config.axes.seeds.len();
    let completed = results.iter().filter(|r| r.status == "completed").count();
    out.push_str(&format!("# {}\n\n", config.title));
    out.push_str(&format!(
        "`sift-lab ablate analyses/{}{}{}`: {} cells ({} completed, {} diverged). Each entry is \
         the best-epoch dev {} × 100, mean ± sample std over the seeds that completed ({} \
         asked), at the learning rate of the sweep with the highest mean (named beside it; \
         chosen on dev, as the paper's best epoch is). NUM: trainable parameters without the \
         task head (target in brackets). *paper*: RoBERTa-large (SPEC.md).\n\n",
        config.source,
        if config.preset == "base" {
            String::new()
        } else {
            format!(" --preset {}", config.preset)
        },
        if config.random { " --random" } else { "" },
        results.len(),
        completed,
        results.len() - completed,
        metric,
        seeds
    ));
    // Header.
    let mut header: Vec<String> = Vec::new();
    for axis in &config.table_rows {
        header.push(
            match axis {
                RowAxis::Method => "method",
                RowAxis::Modules => "modules",
                RowAxis::Budget => "budget",
                RowAxis::Selector => "selector",
            }
            .into(),
        );
    }
    header.push("NUM".into());
    for t in &sums.tasks {
        header.push(task_label(*t).into());
        header.push(format!("{} *paper*", task_label(*t)));
    }
    if sums.tasks.len() > 1 {
        header.push("avg".into());
        header.push("avg *paper*".into());
    }
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for key in &sums.rows {
        let mut line: Vec<String> = Vec::new();
        for axis in &config.table_rows {
            line.push(match axis {
                RowAxis::Method => key.method.map(method_label).unwrap_or("").into(),
                RowAxis::Modules => key
                    .modules
                    .as_deref()
                    .map(modules_label)
                    .unwrap_or_else(|| "–".into()),
                RowAxis::Budget => key.budget.map(with_commas).unwrap_or_else(|| "–".into()),
                RowAxis::Selector => key.selector.map(|s| s.name()).unwrap_or("–").into(),
            });
        }
        let mut num: Option<usize> = None;
        let mut target: Option<usize> = None;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let mut ours_complete = true;
        let mut theirs_complete = true;
        let mut cells: Vec<String> = Vec::new();
        for &task in &sums.tasks {
            let chosen = sums.chosen(key, task);
            let all = sums.cells.get(&(key.clone(), task));
            if let Some(s) = all.and_then(|v| v.first()) {
                num = num.or(Some(s.achieved));
            }
            target = target.or_else(|| {
                results
                    .iter()
                    .find(|r| RowKey::of(r, &config.table_rows) == *key)
                    .and_then(|r| r.cell.budget)
            });
            let text = match chosen {
                Some(s) => {
                    ours.push(mean_std(&s.best).map(|m| m.0).unwrap_or(0.0));
                    let diverged = all
                        .map(|v| v.iter().map(|s| s.diverged).sum::<usize>())
                        .unwrap_or(0);
                    format!(
                        "{} (lr {}{})",
                        value_text(&s.best),
                        lr_text(s.lr),
                        if diverged > 0 {
                            format!("; {diverged} diverged")
                        } else {
                            String::new()
                        }
                    )
                }
                None => {
                    ours_complete = false;
                    match all {
                        Some(v) if v.iter().any(|s| s.diverged > 0) => "diverged".into(),
                        _ => "–".into(),
                    }
                }
            };
            cells.push(text);
            let paper = paper_value(config, key, task);
            match paper {
                Some(p) => theirs.push(p),
                None => theirs_complete = false,
            }
            cells.push(
                paper
                    .map(|p| format!("{p:.1}"))
                    .unwrap_or_else(|| "".into()),
            );
        }
        line.push(match (num, target) {
            (Some(n), Some(t)) => format!("{} ({})", with_commas(n), with_commas(t)),
            (Some(n), None) => with_commas(n),
            _ => "–".into(),
        });
        line.extend(cells);
        if sums.tasks.len() > 1 {
            let avg = |v: &[f64], ok: bool| {
                if ok && !v.is_empty() {
                    format!("{:.1}", v.iter().sum::<f64>() / v.len() as f64)
                } else {
                    String::new()
                }
            };
            line.push(avg(&ours, ours_complete));
            line.push(avg(&theirs, theirs_complete));
        }
        out.push_str(&format!("| {} |\n", line.join(" | ")));
    }
    // Every learning rate: what the choice above was made from.
    out.push_str("\n## Every learning rate of the sweep\n\n");
    out.push_str("| row | task | lr | seeds completed | best epoch | last epoch | diverged |\n|---|---|---|---|---|---|---|\n");
    for key in &sums.rows {
        for &task in &sums.tasks {
            for s in sums.cells.get(&(key.clone(), task)).into_iter().flatten() {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    row_label(key),
                    task_label(task),
                    lr_text(s.lr),
                    s.best.len(),
                    value_text(&s.best),
                    value_text(&s.last),
                    s.diverged
                ));
            }
        }
    }
    out
}

fn row_label(key: &RowKey) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = key.method {
        parts.push(method_label(m).into());
    }
    if let Some(m) = &key.modules {
        parts.push(modules_label(m));
    }
    if let Some(b) = key.budget {
        parts.push(format!("budget {}", with_commas(b)));
    }
    if let Some(s) = key.selector {
        parts.push(format!("selector {}", s.name()));
    }
    parts.join(", ")
}

/// The paper's value for a row and task, where the config lists one.
fn paper_value(config: &AblateConfig, key: &RowKey, task: Task) -> Option<f64> {
    config
        .paper
        .iter()
        .find(|p| {
            p.task == task
                && key.method.is_none_or(|m| m == p.method)
                && (p.modules.is_none() || p.modules == key.modules)
                && (p.budget.is_none() || p.budget == key.budget)
                && (p.selector.is_none() || p.selector == key.selector)
        })
        .map(|p| p.value)
}

/// Paper Fig. 6: the metric against the achieved budget on `task`, one line per method with a
/// min–max band over seeds (each point at its best learning rate); head-only as a flat band.
pub fn budget_figure(config: &AblateConfig, results: &[ResultRow], task: Task) -> BudgetFigure {
    let mut rows_cfg = config.clone();
    rows_cfg.table_rows = vec![RowAxis::Method, RowAxis::Modules, RowAxis::Budget];
    let task_rows: Vec<ResultRow> = results
        .iter()
        .filter(|r| r.cell.task == task)
        .cloned()
        .collect();
    let sums = Summaries::new(&rows_cfg, &task_rows);
    let mut lines: Vec<BandLine> = Vec::new();
    let mut flats: Vec<FlatBand> = Vec::new();
    let mut methods: Vec<MethodKind> = Vec::new();
    for key in &sums.rows {
        if let Some(m) = key.method {
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
    }
    for method in methods {
        let mut points: Vec<(f64, f64, f64, f64)> = Vec::new();
        for key in sums.rows.iter().filter(|k| k.method == Some(method)) {
            let Some(s) = sums.chosen(key, task) else {
                continue;
            };
            let Some((mean, _)) = mean_std(&s.best) else {
                continue;
            };
            let lo = s.best.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = s.best.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if key.budget.is_none() {
                if method == MethodKind::Head {
                    flats.push(FlatBand {
                        label: method_label(method).into(),
                        mean,
                        lo,
                        hi,
                    });
                }
                // Full fine-tuning has no budget axis either; a point at its own count.
                if method == MethodKind::Full {
                    points.push((s.achieved as f64, mean, lo, hi));
                }
                continue;
            }
            points.push((s.achieved as f64, mean, lo, hi));
        }
        if points.is_empty() {
            continue;
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        lines.push(BandLine {
            label: method_label(method).into(),
            x: points.iter().map(|p| p.0).collect(),
            mean: points.iter().map(|p| p.1).collect(),
            lo: points.iter().map(|p| p.2).collect(),
            hi: points.iter().map(|p| p.3).collect(),
        });
    }
    let model = config
        .train
        .model
        .clone()
        .unwrap_or_else(|| crate::hub::DEFAULT_MODEL.into());
    BudgetFigure {
        title: format!("{}: dev accuracy vs trainable parameters", task_label(task)),
        subtitle: format!(
            "{model}, preset {}, {} seed(s); band: min–max over seeds, each point at its best lr",
            config.preset,
            config.axes.seeds.len()
        ),
        x_label: "trainable parameters without the task head (log)".into(),
        y_label: "best-epoch dev accuracy (%)".into(),
        lines,
        flats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ablate::cells::CellSpec;
    use crate::ablate::config::{Axes, Item, PaperValue, TrainSettings};
    use std::collections::BTreeMap;

    fn row(method: MethodKind, lr: f64, seed: u64, best: Option<f64>) -> ResultRow {
        ResultRow {
            cell: CellSpec {
                task: Task::Rte,
                method,
                modules: Some("v".into()),
                budget: Some(1000),
                rate: Some(0.001),
                lora_rank: None,
                achieved: 1002,
                lr,
                seed,
                selector: Default::default(),
            },
            status: if best.is_some() {
                "completed"
            } else {
                "diverged"
            }
            .into(),
            epochs_completed: 1,
            trainable_params: 1002 + 148_610,
            achieved_budget: 1002,
            primary_metric: "accuracy".into(),
            best_epoch: best.map(|_| 1),
            best: best
                .map(|b| BTreeMap::from([("accuracy".to_string(), b)]))
                .unwrap_or_default(),
            best_dev_loss: best.map(|_| 0.6),
            last: best
                .map(|b| BTreeMap::from([("accuracy".to_string(), b - 0.01)]))
                .unwrap_or_default(),
            last_dev_loss: best.map(|_| 0.7),
            wall_seconds: 1.0,
            peak_rss_mib: None,
        }
    }

    /// A SIFT grid on RTE's W_v at a 1,000 budget, with the given rows, sweep and paper values.
    fn rte_sift_config(
        table_rows: Vec<RowAxis>,
        seeds: Vec<u64>,
        lrs: Vec<f64>,
        selectors: Vec<crate::selectors::Selector>,
        paper: Vec<PaperValue>,
    ) -> AblateConfig {
        AblateConfig {
            item: Item::Table4,
            title: "T".into(),
            source: "t.toml".into(),
            preset: "cpu".into(),
            preset_description: None,
            table_rows,
            train: TrainSettings::default(),
            per_task: BTreeMap::new(),
            axes: Axes {
                tasks: vec![Task::Rte],
                methods: vec![MethodKind::Sift],
                modules: vec!["v".into()],
                budgets: vec![1000],
                seeds,
                lr: BTreeMap::from([(MethodKind::Sift, lrs)]),
                selectors,
            },
            random: false,
            paper,
        }
    }

    /// Two learning rates: 1e-3 gives 70, 72, 74 (mean 72, std 2); 5e-3 gives 71 and a
    /// divergence (mean 71). The table takes 1e-3 and names the divergence; the paper's value
    /// stands beside it.
    #[test]
    fn the_table_takes_the_best_mean_learning_rate_and_counts_divergences() {
        let config = rte_sift_config(
            vec![RowAxis::Method, RowAxis::Modules],
            vec![1, 2, 3],
            vec![1e-3, 5e-3],
            vec![crate::selectors::Selector::Gradient],
            vec![PaperValue {
                task: Task::Rte,
                method: MethodKind::Sift,
                modules: Some("v".into()),
                budget: None,
                selector: None,
                value: 85.9,
            }],
        );
        let rows = vec![
            row(MethodKind::Sift, 1e-3, 1, Some(0.70)),
            row(MethodKind::Sift, 5e-3, 1, Some(0.71)),
            row(MethodKind::Sift, 1e-3, 2, Some(0.72)),
            row(MethodKind::Sift, 5e-3, 2, None),
            row(MethodKind::Sift, 1e-3, 3, Some(0.74)),
        ];
        let md = markdown(&config, &rows);
        assert!(
            md.contains("| SIFT | W_v | 1,002 (1,000) | 72.0 ± 2.0 (lr 1e-3; 1 diverged) | 85.9 |"),
            "{md}"
        );
        // The sweep section lists both rates: 5e-3 with one seed (71.0, last 70.0) and one divergence.
        assert!(
            md.contains("| SIFT, W_v | RTE | 5e-3 | 1 | 71.0 | 70.0 | 1 |"),
            "{md}"
        );
        assert!(
            md.contains("| SIFT, W_v | RTE | 1e-3 | 3 | 72.0 ± 2.0 | 71.0 ± 2.0 | 0 |"),
            "{md}"
        );
    }

    /// A selectors grid: every rule is a SIFT cell; the paper's SIFT value stands beside the
    /// `gradient` row and its random-selection value beside the `random` row, nowhere else.
    #[test]
    fn paper_values_of_a_selectors_grid_sit_beside_their_own_rule() {
        use crate::selectors::Selector;
        let paper = |selector, value| PaperValue {
            task: Task::Rte,
            method: MethodKind::Sift,
            modules: None,
            budget: None,
            selector: Some(selector),
            value,
        };
        let config = rte_sift_config(
            vec![RowAxis::Selector],
            vec![1],
            vec![1e-3],
            vec![Selector::Gradient, Selector::Random, Selector::Fisher],
            vec![
                paper(Selector::Gradient, 85.9),
                paper(Selector::Random, 83.8),
            ],
        );
        let with = |selector, best| {
            let mut r = row(MethodKind::Sift, 1e-3, 1, Some(best));
            r.cell.selector = selector;
            r
        };
        let rows = vec![
            with(Selector::Gradient, 0.60),
            with(Selector::Random, 0.55),
            with(Selector::Fisher, 0.58),
        ];
        let md = markdown(&config, &rows);
        assert!(
            md.contains("| gradient | 1,002 (1,000) | 60.0 (lr 1e-3) | 85.9 |"),
            "{md}"
        );
        assert!(
            md.contains("| random | 1,002 (1,000) | 55.0 (lr 1e-3) | 83.8 |"),
            "{md}"
        );
        assert!(
            md.contains("| fisher | 1,002 (1,000) | 58.0 (lr 1e-3) |  |"),
            "{md}"
        );
    }

    #[test]
    fn mean_and_sample_std_by_hand() {
        // 70, 72, 74: mean 72, sample variance (4 + 0 + 4) / 2 = 4.
        assert_eq!(mean_std(&[70.0, 72.0, 74.0]), Some((72.0, Some(2.0))));
        assert_eq!(mean_std(&[70.0]), Some((70.0, None)));
        assert_eq!(mean_std(&[]), None);
        assert_eq!(with_commas(799_998), "799,998");
        assert_eq!(with_commas(12), "12");
        assert_eq!(with_commas(1_000), "1,000");
        assert_eq!(modules_label("q,k,v,o"), "W_q,k,v,o");
        assert_eq!(modules_label("attention"), "W_all");
    }
}
