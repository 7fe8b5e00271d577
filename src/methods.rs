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
//! The task head is trained densely in every method. For a linear layer, Δ is handed to the
//! model as a typed [`Increment`] beside the weight map (sparse entries, or LoRA's factors; see
//! [`EffectiveWeights`]): the training pass folds it into a copy of W once per step, and forms
//! Δ's own gradient from the factors (the sampled products at the k entries; dA, dB), never a
//! dense dW. Other targeted tensors (biases, LayerNorm, embeddings) are rebuilt in the weight
//! map as W + scatter(values).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::model::{EffectiveWeights, Increment, WeightMap};
use crate::optim::{Decay, Param};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    Full,
    Head,
    Sift,
    Random,
    Lora,
}

/// A linear layer's weight: its increment is handed to the model as an [`Increment`]. Token
/// embeddings (BERT's `embeddings.*`, LLaMA's `embed_tokens`, also the tied output layer) and an
/// untied `lm_head` are 2-D but not projections the layers fold Δ into: they are rebuilt in the
/// weight map instead.
fn is_linear_weight(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2
        && name.ends_with(".weight")
        && !name.starts_with("embeddings.")
        && !name.contains("embed_tokens")
        && name != "lm_head.weight"
}

#[derive(Debug)]
struct SparseTarget {
    name: String,
    shape: Vec<usize>,
    /// Flat indices into W, sorted.
    indices: Tensor,
    /// For a linear weight: the (row, column) of each index, handed to the model.
    rows_cols: Option<(Arc<[u32]>, Arc<[u32]>)>,
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

/// LoRA's Δ = (α/r)·B·A.
fn lora_delta(t: &LoraTarget) -> Result<Tensor> {
    Ok((t.b.as_tensor().matmul(t.a.as_tensor())? * t.scale)?.detach())
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
                let rows: Arc<[u32]> = indices.iter().map(|i| i / cols_n).collect();
                let cols: Arc<[u32]> = indices.iter().map(|i| i % cols_n).collect();
                Some((rows, cols))
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

    /// What to build the model from: θ1 with this method's dense and non-linear sparse targets
    /// in place, and the increments of its linear targets. Tensors refer to the live `Var`s, so
    /// a model built from it trains them.
    pub fn effective_weights(&self) -> Result<EffectiveWeights> {
        let mut weights = self.base.clone();
        let mut increments = BTreeMap::new();
        for (name, var) in &self.dense {
            weights.insert(name.clone(), var.as_tensor().clone());
        }
        for target in &self.sparse {
            let base = &self.base[&target.name];
            if let Some((rows, cols)) = &target.rows_cols {
                let increment = Increment::Sparse {
                    rows: rows.clone(),
                    cols: cols.clone(),
                    values: target.values.as_tensor().clone(),
                };
                increments.insert(target.name.clone(), increment);
            } else {
                let delta = Tensor::zeros(base.elem_count(), base.dtype(), base.device())?
                    .index_add(&target.indices, target.values.as_tensor(), 0)?;
                weights.insert(target.name.clone(), (base + delta.reshape(base.shape())?)?);
            }
        }
        for target in &self.lora {
            let increment = Increment::LowRank {
                a: target.a.as_tensor().clone(),
                b: target.b.as_tensor().clone(),
                scale: target.scale,
            };
            increments.insert(target.name.clone(), increment);
        }
        Ok(EffectiveWeights {
            weights,
            increments,
        })
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
            weights.insert(
                t.name.clone(),
                (&self.base[&t.name] + self.sparse_delta(t)?)?,
            );
        }
        for t in &self.lora {
            weights.insert(t.name.clone(), (&self.base[&t.name] + lora_delta(t)?)?);
        }
        Ok(weights)
    }

    /// A sparse target's Δ as a dense tensor of W's shape.
    fn sparse_delta(&self, t: &SparseTarget) -> Result<Tensor> {
        let base = &self.base[&t.name];
        let delta = Tensor::zeros(base.elem_count(), base.dtype(), base.device())?.index_add(
            &t.indices,
            &t.values.as_tensor().detach(),
            0,
        )?;
        Ok(delta.reshape(base.shape())?)
    }

    /// θ_t − θ_start of every tensor the method trains, as dense tensors (the head included;
    /// SIFT's scattered Δ; LoRA's (α/r)·B·A): what a trajectory snapshot records.
    pub fn increments(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut increments = BTreeMap::new();
        for (name, var) in &self.dense {
            increments.insert(name.clone(), (var.as_tensor().detach() - &self.base[name])?);
        }
        for t in &self.sparse {
            increments.insert(t.name.clone(), self.sparse_delta(t)?);
        }
        for t in &self.lora {
            increments.insert(t.name.clone(), lora_delta(t)?);
        }
        Ok(increments)
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

    /// The current increment values per sparse target, in the order of its indices.
    pub fn sparse_values(&self) -> Result<BTreeMap<String, Vec<f32>>> {
        self.sparse
            .iter()
            .map(|t| {
                let v = t.values.as_tensor().to_dtype(candle_core::DType::F32)?;
                Ok((t.name.clone(), v.to_vec1::<f32>()?))
            })
            .collect()
    }

    /// Moves the mask of the sparse targets named in `new` to those (ascending) flat indices.
    /// An entry kept keeps its value; a new entry starts at Δ = 0; a dropped entry returns to
    /// θ1 (its value is gone). Returns, per target and new entry, its position in the old mask
    /// (`None`: new), so that optimizer state can follow. The values are new `Var`s: an
    /// optimizer built before holds stale ones (see `selectors::reselect`).
    pub fn move_mask(
        &mut self,
        new: &BTreeMap<String, Vec<u32>>,
    ) -> Result<BTreeMap<String, Vec<Option<usize>>>> {
        let mut moved = BTreeMap::new();
        for target in self.sparse.iter_mut() {
            let Some(indices) = new.get(&target.name) else {
                continue;
            };
            let old: Vec<u32> = target.indices.to_vec1()?;
            let old_values = target.values.as_tensor().clone();
            let values_f32: Vec<f32> = old_values.to_dtype(candle_core::DType::F32)?.to_vec1()?;
            let from: Vec<Option<usize>> =
                indices.iter().map(|i| old.binary_search(i).ok()).collect();
            let values: Vec<f32> = from
                .iter()
                .map(|p| p.map_or(0.0, |p| values_f32[p]))
                .collect();
            let device = old_values.device();
            let values =
                Tensor::from_vec(values, indices.len(), device)?.to_dtype(old_values.dtype())?;
            target.values = Var::from_tensor(&values)?;
            if let Some((rows, cols)) = &mut target.rows_cols {
                let cols_n = target.shape[1] as u32;
                *rows = indices.iter().map(|i| i / cols_n).collect();
                *cols = indices.iter().map(|i| i % cols_n).collect();
            }
            target.indices = Tensor::from_slice(indices, indices.len(), device)?;
            moved.insert(target.name.clone(), from);
        }
        Ok(moved)
    }

    /// Whether the sparse target `name` is a linear weight (its increment reaches the model as an
    /// [`Increment`], with the base weight as its own tensor).
    pub fn is_linear_target(&self, name: &str) -> bool {
        self.sparse
            .iter()
            .any(|t| t.name == name && t.rows_cols.is_some())
    }

    /// The selected flat indices per sparse target.
    pub fn selected_indices(&self) -> Result<BTreeMap<String, Vec<u32>>> {
        self.sparse
            .iter()
            .map(|t| Ok((t.name.clone(), t.indices.to_vec1::<u32>()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only projections take a Δ as an [`Increment`]; embeddings (and a tied or untied output
    /// layer) are 2-D too but are rebuilt in the map (`--modules all` on a decoder needed this).
    #[test]
    fn projections_are_linear_targets_and_embeddings_are_not() {
        for name in [
            "encoder.layer.0.attention.self.query.weight",
            "model.layers.3.self_attn.q_proj.weight",
            "model.layers.3.mlp.down_proj.weight",
        ] {
            assert!(is_linear_weight(name, &[8, 8]), "{name}");
        }
        for (name, shape) in [
            ("embeddings.word_embeddings.weight", &[30, 8][..]),
            ("model.embed_tokens.weight", &[30, 8]),
            ("lm_head.weight", &[30, 8]),
            ("model.layers.3.input_layernorm.weight", &[8]),
            ("encoder.layer.0.attention.self.query.bias", &[8]),
        ] {
            assert!(!is_linear_weight(name, shape), "{name}");
        }
    }
}
