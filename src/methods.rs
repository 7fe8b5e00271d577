//! Fine-tuning methods. Every method is a way of producing effective weights from the
//! pretrained weight map θ1:
//!
//! | method | trainable | effective weight |
//! |---|---|---|
//! | full   | every tensor | W |
//! | head   | the task head | θ1, head trained |
//! | sift   | k entries per target, picked by gradient magnitude | W + Δ, Δ non-zero at k entries |
//! | random | k entries per target, picked from the seed | W + Δ |
//! | lora   | A, B per target | W + (α/r)·B·A |
//!
//! The task head is trained densely in every method. For a linear layer, Δ is passed to the
//! model as its factors (see `model::bert::increment`) so that the forward and backward passes
//! never form it densely; other targeted tensors (biases, LayerNorm, embeddings) are rebuilt as
//! W + scatter(values).

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::bert::increment;
use crate::model::config::EncoderConfig;
use crate::model::weights::{expected_shapes, head_shapes};
use crate::model::WeightMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    Full,
    Head,
    Sift,
    Random,
    Lora,
}

/// How SIFT distributes its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// k = max(1, ⌊rate · numel⌋) entries of each targeted tensor.
    PerTensor,
    /// The same total budget, spent on the largest |G| across all targeted tensors together.
    Global,
}

/// The module sets `--modules` accepts (comma-separated, combinable).
pub const MODULE_SETS: &str = "q, k, v, o (attention query/key/value/output weights), attention (q,k,v,o weights and biases), ffn (feed-forward weights), all (every encoder tensor)";

/// The encoder tensors a `--modules` spec targets, in architecture order.
pub fn target_names(spec: &str, config: &EncoderConfig) -> Result<Vec<String>> {
    let encoder: Vec<String> = expected_shapes(config, 1)?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !is_head(name))
        .collect();
    let mut wanted: Vec<&str> = Vec::new();
    for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let suffixes: &[&str] = match token {
            "q" => &["attention.self.query.weight"],
            "k" => &["attention.self.key.weight"],
            "v" => &["attention.self.value.weight"],
            "o" => &["attention.output.dense.weight"],
            "attention" | "attn" => &[
                "attention.self.query.weight",
                "attention.self.query.bias",
                "attention.self.key.weight",
                "attention.self.key.bias",
                "attention.self.value.weight",
                "attention.self.value.bias",
                "attention.output.dense.weight",
                "attention.output.dense.bias",
            ],
            "ffn" => &["intermediate.dense.weight", "output.dense.weight"],
            "all" => &[""],
            other => bail!("--modules: unknown module {other:?}; use {MODULE_SETS}"),
        };
        wanted.extend_from_slice(suffixes);
    }
    if wanted.is_empty() {
        bail!("--modules is empty; use {MODULE_SETS}");
    }
    Ok(encoder
        .into_iter()
        .filter(|name| {
            wanted.iter().any(|suffix| {
                suffix.is_empty()
                    // "output.dense.weight" must not also match "attention.output.dense.weight".
                    || (name.ends_with(suffix) && (*suffix != "output.dense.weight" || !name.ends_with("attention.output.dense.weight")))
            })
        })
        .collect())
}

fn is_head(name: &str) -> bool {
    name.starts_with("classifier") || name.starts_with("pooler.")
}

/// A linear layer's weight: its increment can be handed to the model in factored form.
fn is_linear_weight(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && !name.starts_with("embeddings.") && name.ends_with(".weight")
}

/// k = max(1, ⌊rate · numel⌋).
pub fn budget(rate: f64, numel: usize) -> usize {
    ((rate * numel as f64).floor() as usize).clamp(1, numel)
}

/// Flat indices (sorted) of the k largest |g| entries; ties go to the lower index.
pub fn top_k_indices(magnitudes: &[f32], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..magnitudes.len() as u32).collect();
    let k = k.min(order.len());
    if k == 0 {
        return vec![];
    }
    let key = |i: &u32| {
        (
            std::cmp::Reverse(ordered(magnitudes[*i as usize].abs())),
            *i,
        )
    };
    order.select_nth_unstable_by_key(k - 1, key);
    let mut chosen = order[..k].to_vec();
    chosen.sort_unstable();
    chosen
}

/// A total order on f32 magnitudes (NaN sorts lowest).
fn ordered(x: f32) -> u32 {
    if x.is_nan() {
        0
    } else {
        x.to_bits()
    }
}

/// SIFT's selection from accumulated gradients: per tensor, or globally with the same total.
pub fn select_by_gradient(
    gradients: &BTreeMap<String, Vec<f32>>,
    rate: f64,
    selection: Selection,
) -> BTreeMap<String, Vec<u32>> {
    match selection {
        Selection::PerTensor => gradients
            .iter()
            .map(|(name, g)| (name.clone(), top_k_indices(g, budget(rate, g.len()))))
            .collect(),
        Selection::Global => {
            let total: usize = gradients.values().map(|g| budget(rate, g.len())).sum();
            // One pool over all tensors; each entry remembers its tensor.
            let names: Vec<&String> = gradients.keys().collect();
            let mut pool: Vec<(f32, u32, u32)> = Vec::new();
            for (t, g) in gradients.values().enumerate() {
                pool.extend(
                    g.iter()
                        .enumerate()
                        .map(|(i, v)| (v.abs(), t as u32, i as u32)),
                );
            }
            let total = total.min(pool.len());
            pool.select_nth_unstable_by_key(total - 1, |&(m, t, i)| {
                (std::cmp::Reverse(ordered(m)), t, i)
            });
            let mut chosen: BTreeMap<String, Vec<u32>> =
                names.iter().map(|n| ((*n).clone(), Vec::new())).collect();
            for &(_, t, i) in &pool[..total] {
                chosen.get_mut(names[t as usize]).unwrap().push(i);
            }
            chosen.values_mut().for_each(|v| v.sort_unstable());
            chosen
        }
    }
}

/// The random baseline: k indices per tensor drawn uniformly without replacement, from the
/// seed's stream for that tensor name (so the draw does not depend on which tensors are targeted).
pub fn select_random(
    shapes: &[(String, Vec<usize>)],
    rate: f64,
    seed: u64,
) -> BTreeMap<String, Vec<u32>> {
    shapes
        .iter()
        .map(|(name, shape)| {
            let numel: usize = shape.iter().product();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            }));
            let mut indices: Vec<u32> =
                rand::seq::index::sample(&mut rng, numel, budget(rate, numel))
                    .into_iter()
                    .map(|i| i as u32)
                    .collect();
            indices.sort_unstable();
            (name.clone(), indices)
        })
        .collect()
}

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

#[derive(Debug)]
struct SparseTarget {
    name: String,
    shape: Vec<usize>,
    /// Flat indices into W, sorted.
    indices: Tensor,
    /// For a linear weight: the (row, column) of each index, handed to the model.
    rows_cols: Option<(Tensor, Tensor)>,
    values: Var,
}

#[derive(Debug)]
struct LoraTarget {
    name: String,
    a: Var,
    b: Var,
    scale: f64,
}

/// A fine-tuning method applied to a pretrained weight map.
#[derive(Debug)]
pub struct FineTuning {
    pub kind: MethodKind,
    /// θ1; frozen except where `dense` overrides it.
    base: WeightMap,
    /// Tensors trained densely (everything for full, the head otherwise).
    dense: BTreeMap<String, Var>,
    sparse: Vec<SparseTarget>,
    lora: Vec<LoraTarget>,
}

fn decays(name: &str, shape: &[usize]) -> bool {
    shape.len() >= 2 && !name.contains("LayerNorm")
}

impl FineTuning {
    /// Full fine-tuning (`head_names` ignored) or head-only.
    pub fn dense(kind: MethodKind, base: &WeightMap, head_names: &[String]) -> Result<Self> {
        let trained: Vec<&String> = match kind {
            MethodKind::Full => base.keys().collect(),
            MethodKind::Head => head_names.iter().collect(),
            other => bail!("{other:?} is not a dense method"),
        };
        let dense = trained
            .into_iter()
            .map(|name| Ok((name.clone(), Var::from_tensor(&base[name])?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            kind,
            base: base.clone(),
            dense,
            sparse: vec![],
            lora: vec![],
        })
    }

    /// SIFT or random: the head dense, plus sparse increments at `selected` (flat indices).
    pub fn sparse(
        kind: MethodKind,
        base: &WeightMap,
        head_names: &[String],
        selected: &BTreeMap<String, Vec<u32>>,
    ) -> Result<Self> {
        let mut method = Self::dense(MethodKind::Head, base, head_names)?;
        method.kind = kind;
        for (name, indices) in selected {
            let weight = base
                .get(name)
                .with_context(|| format!("no tensor {name}"))?;
            let device = weight.device();
            let rows_cols = if is_linear_weight(name, weight.dims()) {
                let cols_n = weight.dim(1)? as u32;
                let rows: Vec<u32> = indices.iter().map(|i| i / cols_n).collect();
                let cols: Vec<u32> = indices.iter().map(|i| i % cols_n).collect();
                Some((Tensor::new(rows, device)?, Tensor::new(cols, device)?))
            } else {
                None
            };
            let values = Var::from_tensor(&Tensor::zeros(indices.len(), weight.dtype(), device)?)?;
            let indices = Tensor::from_slice(indices, indices.len(), device)?;
            method.sparse.push(SparseTarget {
                name: name.clone(),
                shape: weight.dims().to_vec(),
                indices,
                rows_cols,
                values,
            });
        }
        Ok(method)
    }

    /// LoRA on `targets` (linear weights): A ~ U(±1/√in) (PEFT's Kaiming-uniform with a = √5),
    /// B = 0, scale α/r.
    pub fn lora(
        base: &WeightMap,
        head_names: &[String],
        targets: &[String],
        rank: usize,
        alpha: f64,
        seed: u64,
    ) -> Result<Self> {
        if rank == 0 {
            bail!("--lora-rank must be at least 1");
        }
        let mut method = Self::dense(MethodKind::Head, base, head_names)?;
        method.kind = MethodKind::Lora;
        for name in targets {
            let weight = &base[name];
            if !is_linear_weight(name, weight.dims()) {
                bail!(
                    "--method lora: {name} is not a linear weight; LoRA targets q, k, v, o or ffn"
                );
            }
            let (out_dim, in_dim) = weight.dims2()?;
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a = crate::model::init::uniform(
                &format!("{name}.lora.a"),
                (rank, in_dim),
                bound,
                seed,
                weight.device(),
            )?
            .to_dtype(weight.dtype())?;
            let b = Tensor::zeros((out_dim, rank), weight.dtype(), weight.device())?;
            method.lora.push(LoraTarget {
                name: name.clone(),
                a: Var::from_tensor(&a)?,
                b: Var::from_tensor(&b)?,
                scale: alpha / rank as f64,
            });
        }
        Ok(method)
    }

    /// The weight map to build the model from: θ1 with this method's trainable parts in place.
    /// Tensors refer to the live `Var`s, so a model built from it trains them.
    pub fn effective_weights(&self) -> Result<WeightMap> {
        let mut weights = self.base.clone();
        for (name, var) in &self.dense {
            weights.insert(name.clone(), var.as_tensor().clone());
        }
        for target in &self.sparse {
            let base = &self.base[&target.name];
            if let Some((rows, cols)) = &target.rows_cols {
                let prefix = target.name.trim_end_matches(".weight");
                weights.insert(format!("{prefix}.{}", increment::DELTA_ROWS), rows.clone());
                weights.insert(format!("{prefix}.{}", increment::DELTA_COLS), cols.clone());
                weights.insert(
                    format!("{prefix}.{}", increment::DELTA_VALUES),
                    target.values.as_tensor().clone(),
                );
            } else {
                let delta = Tensor::zeros(base.elem_count(), base.dtype(), base.device())?
                    .index_add(&target.indices, target.values.as_tensor(), 0)?;
                weights.insert(target.name.clone(), (base + delta.reshape(base.shape())?)?);
            }
        }
        for target in &self.lora {
            let prefix = target.name.trim_end_matches(".weight");
            weights.insert(
                format!("{prefix}.{}", increment::LORA_A),
                target.a.as_tensor().clone(),
            );
            weights.insert(
                format!("{prefix}.{}", increment::LORA_B),
                target.b.as_tensor().clone(),
            );
            weights.insert(
                format!("{prefix}.{}", increment::LORA_SCALE),
                Tensor::new(target.scale, &Device::Cpu)?,
            );
        }
        Ok(weights)
    }

    /// What the optimizer updates, with each tensor's weight-decay rule.
    pub fn params(&self) -> Result<Vec<Param>> {
        let mut params: Vec<Param> = self
            .dense
            .iter()
            .map(|(name, var)| Param {
                name: name.clone(),
                var: var.clone(),
                decay: if decays(name, var.dims()) {
                    Decay::Plain
                } else {
                    Decay::None
                },
            })
            .collect();
        for t in &self.sparse {
            let decay = if decays(&t.name, &t.shape) {
                Decay::Effective {
                    base: self.base[&t.name]
                        .flatten_all()?
                        .index_select(&t.indices, 0)?,
                }
            } else {
                Decay::None
            };
            params.push(Param {
                name: format!("{}.delta", t.name),
                var: t.values.clone(),
                decay,
            });
        }
        for t in &self.lora {
            params.push(Param {
                name: format!("{}.lora_A", t.name),
                var: t.a.clone(),
                decay: Decay::None,
            });
            params.push(Param {
                name: format!("{}.lora_B", t.name),
                var: t.b.clone(),
                decay: Decay::None,
            });
        }
        Ok(params)
    }

    /// Number of trainable scalars.
    pub fn trainable_count(&self) -> Result<usize> {
        Ok(self.params()?.iter().map(|p| p.var.elem_count()).sum())
    }

    /// Dense fine-tuned weights (θ1 + Δ merged), for export and evaluation.
    pub fn merged(&self) -> Result<WeightMap> {
        let mut weights = self.base.clone();
        for (name, var) in &self.dense {
            weights.insert(name.clone(), var.as_tensor().detach());
        }
        for t in &self.sparse {
            let base = &self.base[&t.name];
            let delta = Tensor::zeros(base.elem_count(), base.dtype(), base.device())?.index_add(
                &t.indices,
                &t.values.as_tensor().detach(),
                0,
            )?;
            weights.insert(t.name.clone(), (base + delta.reshape(base.shape())?)?);
        }
        for t in &self.lora {
            let delta = (t.b.as_tensor().matmul(t.a.as_tensor())? * t.scale)?.detach();
            weights.insert(t.name.clone(), (&self.base[&t.name] + delta)?);
        }
        Ok(weights)
    }

    /// The increment alone, as safetensors tensors: per sparse target `NAME.indices` (flat, u32)
    /// and `NAME.values`; per LoRA target `NAME.lora_A`, `NAME.lora_B` (and the scale in the
    /// metadata); dense tensors (the head; everything for full) under their own names.
    pub fn delta_tensors(&self) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
        let mut tensors = HashMap::new();
        let mut meta = HashMap::new();
        meta.insert(
            "method".to_string(),
            format!("{:?}", self.kind).to_lowercase(),
        );
        for (name, var) in &self.dense {
            tensors.insert(name.clone(), var.as_tensor().detach());
        }
        for t in &self.sparse {
            tensors.insert(format!("{}.indices", t.name), t.indices.clone());
            tensors.insert(format!("{}.values", t.name), t.values.as_tensor().detach());
            meta.insert(format!("{}.shape", t.name), format!("{:?}", t.shape));
        }
        for t in &self.lora {
            tensors.insert(format!("{}.lora_A", t.name), t.a.as_tensor().detach());
            tensors.insert(format!("{}.lora_B", t.name), t.b.as_tensor().detach());
            meta.insert(format!("{}.lora_scale", t.name), t.scale.to_string());
        }
        Ok((tensors, meta))
    }

    /// The selected flat indices per sparse target.
    pub fn selected_indices(&self) -> Result<BTreeMap<String, Vec<u32>>> {
        self.sparse
            .iter()
            .map(|t| Ok((t.name.clone(), t.indices.to_vec1::<u32>()?)))
            .collect()
    }
}

/// The task head's tensor names for a config.
pub fn head_names(config: &EncoderConfig, num_labels: usize) -> Result<Vec<String>> {
    Ok(
        head_shapes(config.family()?, config.hidden_size, num_labels)
            .into_iter()
            .map(|(n, _)| n)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm_config() -> EncoderConfig {
        serde_json::from_str(r#"{"model_type":"bert","vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,"num_attention_heads":12,"intermediate_size":1536,"max_position_embeddings":512}"#).unwrap()
    }

    #[test]
    fn module_sets_pick_the_right_tensors() {
        let c = minilm_config();
        let names = |spec| target_names(spec, &c).unwrap();
        assert_eq!(
            names("q"),
            (0..6)
                .map(|l| format!("encoder.layer.{l}.attention.self.query.weight"))
                .collect::<Vec<_>>()
        );
        assert_eq!(names("q,k,v,o").len(), 24);
        assert_eq!(names("attention").len(), 48);
        let ffn = names("ffn");
        assert_eq!(ffn.len(), 12);
        assert!(ffn.iter().all(|n| !n.contains("attention")), "{ffn:?}");
        // Every encoder tensor: 5 embedding tensors + 16 per layer; never the head.
        assert_eq!(names("all").len(), 5 + 6 * 16);
        assert!(names("all")
            .iter()
            .all(|n| !n.starts_with("classifier") && !n.starts_with("pooler")));
        let err = target_names("q,x", &c).unwrap_err().to_string();
        assert!(err.contains("--modules") && err.contains("\"x\""), "{err}");
    }

    #[test]
    fn top_k_takes_the_largest_magnitudes_and_breaks_ties_by_index() {
        let g = [0.1, -5.0, 3.0, -3.0, 0.0, 4.0];
        assert_eq!(top_k_indices(&g, 1), vec![1]);
        assert_eq!(top_k_indices(&g, 3), vec![1, 2, 5]);
        // |3.0| = |−3.0|: the lower index wins the last place.
        assert_eq!(top_k_indices(&g, 4), vec![1, 2, 3, 5]);
        assert_eq!(budget(0.01, 147_456), 1474);
        assert_eq!(budget(1e-9, 10), 1);
        assert_eq!(budget(1.0, 10), 10);
    }

    #[test]
    fn global_selection_pools_all_tensors() {
        let mut g = BTreeMap::new();
        g.insert("a".to_string(), vec![10.0, 0.0, 0.0, 0.0]);
        g.insert("b".to_string(), vec![9.0, 8.0, 7.0, 0.0]);
        // Budget: rate 0.5 → 2 per tensor, 4 in all; globally the 4 largest are a0, b0, b1, b2.
        let per = select_by_gradient(&g, 0.5, Selection::PerTensor);
        assert_eq!(per["a"], vec![0, 1]);
        let global = select_by_gradient(&g, 0.5, Selection::Global);
        assert_eq!(global["a"], vec![0]);
        assert_eq!(global["b"], vec![0, 1, 2]);
    }
}
