//! Loading a LLaMA-architecture decoder from wherever it is: a GGUF file, a transformers
//! directory (config.json + safetensors + tokenizer.json), or a Hub id whose cached snapshot
//! holds either. Everything becomes the same name → f32 tensor map with transformers' names.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use super::config::LlamaConfig;
use super::llama::Llama;
use super::{gguf, WeightMap};
use crate::hub;

/// A decoder's weights, config and tokenizer.
pub struct Decoder {
    /// What the user asked for.
    pub name: String,
    /// The GGUF file or the model directory the weights came from.
    pub source: PathBuf,
    pub config: LlamaConfig,
    pub weights: WeightMap,
    pub tokenizer: tokenizers::Tokenizer,
}

impl Decoder {
    /// The model over θ1 (no increments).
    pub fn build(&self) -> Result<Llama> {
        Ok(Llama::new(
            &self.config,
            &self.weights,
            &Default::default(),
        )?)
    }

    /// Token ids of `text` with what the tokenizer adds to every text (a LLaMA tokenizer.json's
    /// BOS; nothing for SmolLM2's GGUF, whose metadata says add_bos_token = false).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// Loads `model`: a `.gguf` file, a directory (transformers files, or one `.gguf`), or a Hub id
/// in the local cache.
pub fn load_decoder(model: &str, device: &Device) -> Result<Decoder> {
    let path = Path::new(model);
    if path.is_file() {
        if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
            bail!("--model {model}: a file must be a .gguf; pass a directory for transformers checkpoints");
        }
        return from_gguf(model, path, device);
    }
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else if model.contains('/') && !model.starts_with('.') && !model.starts_with('/') {
        hub::cached_snapshot(model, false).with_context(|| format!("--model {model}"))?
    } else {
        bail!("--model {model}: no such file or directory, and not a Hub id ORG/NAME");
    };
    if dir.join("config.json").is_file() {
        return from_transformers(model, &dir, device);
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => from_gguf(model, one, device),
        [] => bail!(
            "--model {model}: {} has neither config.json nor a .gguf file",
            dir.display()
        ),
        many => bail!(
            "--model {model}: {} holds {} .gguf files; pass the one to use as --model FILE",
            dir.display(),
            many.len()
        ),
    }
}

fn from_gguf(name: &str, path: &Path, device: &Device) -> Result<Decoder> {
    let loaded = gguf::load(path, device)?;
    Ok(Decoder {
        name: name.into(),
        source: path.to_path_buf(),
        config: loaded.config,
        weights: loaded.weights,
        tokenizer: loaded.tokenizer,
    })
}

fn from_transformers(name: &str, dir: &Path, device: &Device) -> Result<Decoder> {
    let files = hub::resolve(&dir.to_string_lossy())?;
    let config = LlamaConfig::load(&files.config)?;
    let mut weights = WeightMap::new();
    for path in &files.weights {
        let tensors = candle_core::safetensors::load(path, device)
            .with_context(|| format!("reading weights from {}", path.display()))?;
        for (name, tensor) in tensors {
            weights.insert(name, tensor.to_dtype(DType::F32)?);
        }
    }
    let tokenizer_path = files
        .tokenizer
        .clone()
        .with_context(|| format!("{}: no tokenizer.json", dir.display()))?;
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer_path.display()))?;
    Ok(Decoder {
        name: name.into(),
        source: dir.to_path_buf(),
        config,
        weights,
        tokenizer,
    })
}

/// Writes `weights` (transformers' names) as a `LlamaForCausalLM` checkpoint in `dir`:
/// model.safetensors (f32), config.json and tokenizer.json. transformers'
/// `AutoModelForCausalLM.from_pretrained(dir)` and `sift-lab eval --mmlu --model DIR` load it.
/// Refuses a directory that already holds a model.
pub fn save_transformers(
    dir: &Path,
    config: &LlamaConfig,
    weights: &WeightMap,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<()> {
    if dir.join("model.safetensors").exists() {
        bail!(
            "--export-hf {}: already holds a model.safetensors; pass another directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let tensors: Vec<(String, candle_core::Tensor)> = names
        .into_iter()
        .filter(|n| !(config.tie_word_embeddings && n.as_str() == "lm_head.weight"))
        .map(|n| Ok((n.clone(), weights[n].to_dtype(DType::F32)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let path = dir.join("model.safetensors");
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(meta),
        &path,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    let mut json = serde_json::to_value(config)?;
    let extra = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
    });
    if let (Some(obj), Some(more)) = (json.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
        obj.retain(|_, v| !v.is_null());
    }
    crate::output::write_json(&dir.join("config.json"), &json)?;
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("writing {}/tokenizer.json: {e}", dir.display()))?;
    Ok(())
}
