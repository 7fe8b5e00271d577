//! Weights are a map from tensor name to tensor. Names are those of transformers' `BertModel`
//! (no `bert.` / `roberta.` prefix) plus the head's names, so that a `*ForSequenceClassification`
//! checkpoint loads as is and exports back to the same names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::config::{EncoderConfig, Family};

pub type WeightMap = HashMap<String, Tensor>;

/// Reads safetensors files into a [`WeightMap`] with canonical names, as f32.
/// Drops what the encoder does not use (position-id buffers, pre-training heads).
pub fn load_safetensors(paths: &[PathBuf], device: &Device) -> Result<WeightMap> {
    let mut weights = WeightMap::new();
    for path in paths {
        let tensors = read_safetensors(path, device)?;
        for (name, tensor) in tensors {
            if let Some(name) = canonical_name(&name) {
                weights.insert(name, tensor.to_dtype(DType::F32)?);
            }
        }
    }
    Ok(weights)
}

/// Reads every tensor of one safetensors file; a file that does not parse is named, with its
/// size, as truncated or corrupt (an interrupted download or copy, usually).
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device).map_err(|e| {
        let size = std::fs::metadata(path).map(|m| m.len());
        match size {
            Err(io) => anyhow::anyhow!("cannot read {}: {io}", path.display()),
            Ok(bytes) => anyhow::anyhow!(
                "{}: not a readable safetensors file ({bytes} bytes): truncated or corrupt ({e}). Re-download or re-export it",
                path.display()
            ),
        }
    })
}

/// Maps a checkpoint name onto sift-lab's name, or `None` for tensors the encoder ignores.
fn canonical_name(name: &str) -> Option<String> {
    if name.ends_with("position_ids") || name.starts_with("cls.") || name.starts_with("lm_head.") {
        return None;
    }
    let name = name
        .strip_prefix("bert.")
        .or_else(|| name.strip_prefix("roberta."))
        .unwrap_or(name);
    // Old TF-converted BERT checkpoints call the LayerNorm parameters gamma and beta.
    let name = name
        .replace("LayerNorm.gamma", "LayerNorm.weight")
        .replace("LayerNorm.beta", "LayerNorm.bias");
    Some(name)
}

/// Every tensor of the architecture with its shape, encoder first, then the task head.
pub fn expected_shapes(
    config: &EncoderConfig,
    num_labels: usize,
) -> Result<Vec<(String, Vec<usize>)>> {
    let h = config.hidden_size;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![config.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![config.max_position_embeddings, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![config.type_vocab_size, h],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for layer in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{layer}");
        for (name, shape) in [
            ("attention.self.query.weight", vec![h, h]),
            ("attention.self.query.bias", vec![h]),
            ("attention.self.key.weight", vec![h, h]),
            ("attention.self.key.bias", vec![h]),
            ("attention.self.value.weight", vec![h, h]),
            ("attention.self.value.bias", vec![h]),
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            (
                "intermediate.dense.weight",
                vec![config.intermediate_size, h],
            ),
            ("intermediate.dense.bias", vec![config.intermediate_size]),
            ("output.dense.weight", vec![h, config.intermediate_size]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            shapes.push((format!("{p}.{name}"), shape));
        }
    }
    shapes.extend(head_shapes(config.family()?, h, num_labels));
    Ok(shapes)
}

/// The tensors of the sequence-classification head (for BERT including the pooler, which
/// transformers keeps inside `bert.` but which only the head uses).
pub fn head_shapes(family: Family, hidden: usize, num_labels: usize) -> Vec<(String, Vec<usize>)> {
    match family {
        Family::Bert => vec![
            ("pooler.dense.weight".into(), vec![hidden, hidden]),
            ("pooler.dense.bias".into(), vec![hidden]),
            ("classifier.weight".into(), vec![num_labels, hidden]),
            ("classifier.bias".into(), vec![num_labels]),
        ],
        Family::Roberta => vec![
            ("classifier.dense.weight".into(), vec![hidden, hidden]),
            ("classifier.dense.bias".into(), vec![hidden]),
            (
                "classifier.out_proj.weight".into(),
                vec![num_labels, hidden],
            ),
            ("classifier.out_proj.bias".into(), vec![num_labels]),
        ],
    }
}

/// Whether `name` is the classifier proper, which transformers keeps outside the encoder's
/// prefix (`bert.`, `roberta.`).
pub fn is_classifier(name: &str) -> bool {
    name.starts_with("classifier")
}

/// Whether `name` belongs to the sequence-classification head: the classifier, and for BERT the
/// pooler, which transformers keeps inside `bert.` but which only the head uses.
pub fn is_head(name: &str) -> bool {
    is_classifier(name) || name.starts_with("pooler.")
}

/// The task head's tensor names for a config, in architecture order.
pub fn head_names(config: &EncoderConfig, num_labels: usize) -> Result<Vec<String>> {
    Ok(
        head_shapes(config.family()?, config.hidden_size, num_labels)
            .into_iter()
            .map(|(n, _)| n)
            .collect(),
    )
}

/// Checks that `weights` holds exactly the architecture's tensors with the right shapes.
pub fn check_complete(
    weights: &WeightMap,
    config: &EncoderConfig,
    num_labels: usize,
    source: &str,
) -> Result<()> {
    for (name, shape) in expected_shapes(config, num_labels)? {
        match weights.get(&name) {
            None => bail!("{source}: tensor {name} is missing"),
            Some(t) if t.dims() != shape.as_slice() => {
                let hint = if is_classifier(&name) {
                    " (the checkpoint's head was trained for a task with another number of labels)"
                } else {
                    ""
                };
                bail!(
                    "{source}: tensor {name} has shape {:?}, expected {:?}{hint}",
                    t.dims(),
                    shape
                )
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Writes `weights` as a transformers `*ForSequenceClassification` checkpoint: `config.json`
/// (the base config with the head size and architecture set) and `model.safetensors`.
pub fn save_hf_checkpoint(
    weights: &WeightMap,
    base_config: &Path,
    num_labels: usize,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = std::fs::read_to_string(base_config)
        .with_context(|| format!("reading {}", base_config.display()))?;
    let mut json: serde_json::Value = serde_json::from_str(&text)?;
    let config: EncoderConfig = serde_json::from_value(json.clone())?;
    let family = config.family()?;
    let obj = json
        .as_object_mut()
        .context("config.json is not an object")?;
    let arch = match family {
        Family::Bert => "BertForSequenceClassification",
        Family::Roberta => "RobertaForSequenceClassification",
    };
    obj.insert("architectures".into(), serde_json::json!([arch]));
    obj.insert("num_labels".into(), serde_json::json!(num_labels));
    let labels: serde_json::Map<String, serde_json::Value> = (0..num_labels)
        .map(|i| (i.to_string(), serde_json::json!(format!("LABEL_{i}"))))
        .collect();
    obj.insert("id2label".into(), serde_json::Value::Object(labels.clone()));
    let label2id: serde_json::Map<String, serde_json::Value> = (0..num_labels)
        .map(|i| (format!("LABEL_{i}"), serde_json::json!(i)))
        .collect();
    obj.insert("label2id".into(), serde_json::Value::Object(label2id));
    if num_labels == 1 {
        obj.insert("problem_type".into(), serde_json::json!("regression"));
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&json)?,
    )?;

    let prefixed: HashMap<String, Tensor> = weights
        .iter()
        .map(|(name, t)| {
            let hf_name = if is_classifier(name) {
                name.clone()
            } else {
                format!("{}{name}", family.hf_prefix())
            };
            Ok((hf_name, t.contiguous()?))
        })
        .collect::<Result<_>>()?;
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&prefixed, &path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
