//! The parts of a Hugging Face `config.json` that the BERT-family encoders need.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Which member of the BERT family: they differ in position ids, token types and the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// BERT and its distillations (MiniLM, ...): pooler + classifier head.
    Bert,
    /// RoBERTa / XLM-R: positions start after the padding index, a two-layer head on `<s>`.
    Roberta,
}

impl Family {
    /// The prefix transformers puts before encoder tensors in `*ForSequenceClassification`.
    pub fn hf_prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta => "roberta.",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
    Silu,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Number of outputs of the task head; set from the task, not only from the file.
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init_range() -> f64 {
    0.02
}

impl EncoderConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: EncoderConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a BERT-family config.json", path.display()))?;
        config
            .family()
            .with_context(|| format!("{}", path.display()))?;
        config
            .activation()
            .with_context(|| format!("{}", path.display()))?;
        if config.hidden_size % config.num_attention_heads != 0 {
            bail!(
                "{}: hidden_size {} is not a multiple of num_attention_heads {}",
                path.display(),
                config.hidden_size,
                config.num_attention_heads
            );
        }
        Ok(config)
    }

    pub fn family(&self) -> Result<Family> {
        match self.model_type.as_str() {
            "bert" => Ok(Family::Bert),
            "roberta" | "xlm-roberta" | "camembert" => Ok(Family::Roberta),
            other => bail!("model_type {other:?} is not supported: sift-lab's encoder covers bert, roberta and xlm-roberta"),
        }
    }

    pub fn activation(&self) -> Result<Activation> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            "silu" | "swish" => Ok(Activation::Silu),
            other => bail!("hidden_act {other:?} is not supported"),
        }
    }

    /// The head size a checkpoint was saved with, when it says.
    pub fn saved_num_labels(&self) -> Option<usize> {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(|m| m.len()))
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_token_id.unwrap_or(match self.family() {
            Ok(Family::Roberta) => 1,
            _ => 0,
        })
    }
}
