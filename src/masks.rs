//! `sift-lab masks`: every selection rule's mask for one model, task and budget, and how much
//! each pair of masks overlaps, per tensor and over all targeted tensors, beside the overlap two
//! independent uniform masks of the same sizes would have by chance (E = a·b/n).
//!
//! OUT holds `mask-overlap.parquet` (rule_a, rule_b, tensor — "all" for the pooled row —,
//! entries, k_a, k_b, overlap, jaccard, chance), `mask-overlap.md` (the pooled overlaps as a
//! table), `masks.safetensors` (each rule's flat indices, `RULE/TENSOR`) and `summary.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};

use crate::budget::Selection;
use crate::data::{Dataset, Split, Task};
use crate::grad_stats::math::intersection_count;
use crate::selectors::{Masks, SelectionInputs, Selector};
use crate::{model, output, progress, select};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MasksConfig {
    pub model: String,
    pub task: Task,
    pub data_dir: PathBuf,
    pub modules: String,
    pub rate: f64,
    pub selection: Selection,
    /// s: the batches the gradient rules sum over.
    pub batches: usize,
    pub batch_size: usize,
    pub max_len: usize,
    pub seed: u64,
    pub movement_steps: usize,
    pub movement_lr: f64,
    /// The rules compared (each pair once, and each with itself).
    pub rules: Vec<Selector>,
    pub train_limit: Option<usize>,
}

/// One pair of rules on one tensor (or "all").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverlapRow {
    pub rule_a: String,
    pub rule_b: String,
    pub tensor: String,
    /// Entries of the tensor (all targets together for "all").
    pub entries: usize,
    pub k_a: usize,
    pub k_b: usize,
    /// |A ∩ B|.
    pub overlap: usize,
    /// |A ∩ B| / |A ∪ B|.
    pub jaccard: f64,
    /// a·b/n: the expected overlap of independent uniform masks of these sizes (summed over
    /// tensors for "all").
    pub chance: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasksReport {
    pub config: MasksConfig,
    /// The pooled rows ("all"), one per pair.
    pub pooled: Vec<OverlapRow>,
    pub seconds: f64,
}

pub const OVERLAP_FILE: &str = "mask-overlap.parquet";
pub const TABLE_FILE: &str = "mask-overlap.md";
pub const MASKS_FILE: &str = "masks.safetensors";

/// The overlap rows of two masks over the same tensors: one per tensor, then "all".
pub fn overlap_rows(
    names: (&str, &str),
    a: &BTreeMap<String, Vec<u32>>,
    b: &BTreeMap<String, Vec<u32>>,
    entries: &BTreeMap<String, usize>,
) -> Vec<OverlapRow> {
    let mut rows = Vec::new();
    let mut all = OverlapRow {
        rule_a: names.0.into(),
        rule_b: names.1.into(),
        tensor: "all".into(),
        entries: 0,
        k_a: 0,
        k_b: 0,
        overlap: 0,
        jaccard: 0.0,
        chance: 0.0,
    };
    for (tensor, &n) in entries {
        let (ma, mb) = (&a[tensor], &b[tensor]);
        let overlap = intersection_count(ma, mb);
        let chance = ma.len() as f64 * mb.len() as f64 / n.max(1) as f64;
        rows.push(OverlapRow {
            rule_a: names.0.into(),
            rule_b: names.1.into(),
            tensor: tensor.clone(),
            entries: n,
            k_a: ma.len(),
            k_b: mb.len(),
            overlap,
            jaccard: jaccard(overlap, ma.len(), mb.len()),
            chance,
        });
        all.entries += n;
        all.k_a += ma.len();
        all.k_b += mb.len();
        all.overlap += overlap;
        all.chance += chance;
    }
    all.jaccard = jaccard(all.overlap, all.k_a, all.k_b);
    rows.push(all);
    rows
}

fn jaccard(overlap: usize, a: usize, b: usize) -> f64 {
    let union = a + b - overlap;
    if union == 0 {
        f64::NAN
    } else {
        overlap as f64 / union as f64
    }
}

/// `sift-lab masks`: computes each rule's mask and writes OUT (see the module docs). Refuses an
/// OUT that already holds these files.
pub fn run(config: &MasksConfig, out: &Path) -> Result<MasksReport> {
    if config.rules.is_empty() {
        bail!("--rules is empty; give some of: gradient, fisher, magnitude-largest, magnitude-smallest, movement, random");
    }
    if !(config.rate > 0.0 && config.rate <= 1.0) {
        bail!(
            "--rate {}: must be in (0, 1] (a fraction of each tensor, e.g. 0.01 for 1 %)",
            config.rate
        );
    }
    if config.batches == 0 {
        bail!("--batches 0: the gradient rules need at least one batch");
    }
    if config.batch_size == 0 {
        bail!("--batch-size 0: must be at least 1");
    }
    crate::data::check_max_len_flag(config.max_len)?;
    output::ensure_absent(
        &[
            out.join(OVERLAP_FILE),
            out.join(TABLE_FILE),
            out.join(MASKS_FILE),
        ],
        "choose another --out (this directory holds an earlier masks run)",
    )?;
    let _lock = crate::run_lock::RunLock::dir(out)?;
    let started = std::time::Instant::now();
    let device = Device::Cpu;
    let pretrained = model::load_pretrained(
        &config.model,
        None,
        config.task.num_labels(),
        config.seed,
        &device,
    )?;
    pretrained.check_max_len(config.max_len)?;
    let train = Dataset::load(
        &config.data_dir,
        config.task,
        Split::Train,
        &pretrained.tokenizer,
        config.max_len,
        config.train_limit,
    )?;
    let targets = select::target_names(&config.modules, &pretrained.config)?;
    let entries: BTreeMap<String, usize> = targets
        .iter()
        .map(|n| (n.clone(), pretrained.weights[n].elem_count()))
        .collect();
    let mut scorer = Masks::new(SelectionInputs {
        pretrained: &pretrained,
        train: &train,
        targets: &targets,
        rate: config.rate,
        selection: config.selection,
        batches: config.batches,
        batch_size: config.batch_size,
        seed: config.seed,
        movement_steps: config.movement_steps,
        movement_lr: config.movement_lr,
    });
    let mut rules = config.rules.clone();
    rules.dedup();
    let bar = progress::bar(rules.len() as u64, "rules");
    let mut masks: Vec<(Selector, BTreeMap<String, Vec<u32>>)> = Vec::new();
    for &rule in &rules {
        if progress::interrupted() {
            bar.abandon();
            bail!(
                "interrupted before the {} mask; nothing was written",
                rule.name()
            );
        }
        bar.set_message(rule.name());
        masks.push((rule, scorer.mask(rule)?));
        bar.inc(1);
    }
    bar.finish_and_clear();

    let mut rows = Vec::new();
    for (i, (ra, ma)) in masks.iter().enumerate() {
        for (rb, mb) in &masks[i..] {
            rows.extend(overlap_rows((ra.name(), rb.name()), ma, mb, &entries));
        }
    }
    std::fs::create_dir_all(out)?;
    write_masks(&masks, &out.join(MASKS_FILE))?;
    write_overlaps(&rows, &out.join(OVERLAP_FILE), config)?;
    let pooled: Vec<OverlapRow> = rows.into_iter().filter(|r| r.tensor == "all").collect();
    output::write_atomic(&out.join(TABLE_FILE), table(&pooled, config).as_bytes())?;
    let report = MasksReport {
        config: config.clone(),
        pooled,
        seconds: started.elapsed().as_secs_f64(),
    };
    output::write_json(&out.join(output::SUMMARY_FILE), &report)?;
    Ok(report)
}

fn write_masks(masks: &[(Selector, BTreeMap<String, Vec<u32>>)], path: &Path) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (rule, mask) in masks {
        for (name, idx) in mask {
            tensors.push((
                format!("{}/{name}", rule.name()),
                Tensor::from_slice(idx, idx.len(), &Device::Cpu)?,
            ));
        }
    }
    let tmp = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), None, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn write_overlaps(rows: &[OverlapRow], path: &Path, config: &MasksConfig) -> Result<()> {
    let columns = vec![
        output::column_of("rule_a", rows, |r| r.rule_a.as_str()),
        output::column_of("rule_b", rows, |r| r.rule_b.as_str()),
        output::column_of("tensor", rows, |r| r.tensor.as_str()),
        output::column_of("entries", rows, |r| r.entries as u64),
        output::column_of("k_a", rows, |r| r.k_a as u64),
        output::column_of("k_b", rows, |r| r.k_b as u64),
        output::column_of("overlap", rows, |r| r.overlap as u64),
        output::column_of("jaccard", rows, |r| r.jaccard),
        output::column_of("chance", rows, |r| r.chance),
    ];
    let mut df = DataFrame::new_infer_height(columns)?;
    output::write_parquet(
        &mut df,
        path,
        &[("masks_config".into(), serde_json::to_string(config)?)],
    )
}

/// The pooled overlaps as Markdown: each rule against the first (the gradient rule by default),
/// then the full matrix of overlap counts.
pub fn table(pooled: &[OverlapRow], config: &MasksConfig) -> String {
    let mut rules: Vec<&str> = Vec::new();
    for r in pooled {
        for n in [&r.rule_a, &r.rule_b] {
            if !rules.contains(&n.as_str()) {
                rules.push(n);
            }
        }
    }
    let find = |a: &str, b: &str| {
        pooled
            .iter()
            .find(|r| (r.rule_a == a && r.rule_b == b) || (r.rule_a == b && r.rule_b == a))
    };
    let mut s = format!(
        "# Mask overlap: {} on {}, modules {}, rate {}, {:?} selection, s = {} batch(es) of {}, seed {}\n\n",
        config.model,
        config.task.name(),
        config.modules,
        config.rate,
        config.selection,
        config.batches,
        config.batch_size,
        config.seed
    );
    if let Some(first) = rules.first() {
        s.push_str(&format!(
            "| rule | k | overlap with {first} | Jaccard | chance |\n|---|---:|---:|---:|---:|\n"
        ));
        for rule in &rules {
            if let Some(r) = find(first, rule) {
                let k = if r.rule_a == *rule { r.k_a } else { r.k_b };
                s.push_str(&format!(
                    "| {rule} | {k} | {} | {:.4} | {:.1} |\n",
                    r.overlap, r.jaccard, r.chance
                ));
            }
        }
        s.push_str("\nOverlap counts, every pair:\n\n| |");
        for rule in &rules {
            s.push_str(&format!(" {rule} |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(rules.len()));
        s.push('\n');
        for a in &rules {
            s.push_str(&format!("| {a} |"));
            for b in &rules {
                match find(a, b) {
                    Some(r) => s.push_str(&format!(" {} |", r.overlap)),
                    None => s.push_str(" |"),
                }
            }
            s.push('\n');
        }
    }
    s
}
