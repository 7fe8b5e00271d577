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
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
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

/// The parts of a LLaMA-architecture `config.json` (`LlamaForCausalLM`; also SmolLM2, Mistral
/// without sliding windows) that the decoder needs: RMSNorm, rotary embeddings, grouped-query
/// attention, SwiGLU.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: fewer key/value heads than query heads (default: as many).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// `lm_head.weight` is `model.embed_tokens.weight` (no tensor of its own).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_positions() -> usize {
    2048
}

/// Shapes of the published LLaMA-1 models (Touvron et al. 2023, Table 2), for `sift-lab memory`.
pub const LLAMA_PRESETS: &[(&str, usize, usize, usize, usize)] = &[
    // name, hidden, intermediate, layers, heads
    ("llama-7b", 4096, 11008, 32, 32),
    ("llama-13b", 5120, 13824, 40, 40),
    ("llama-33b", 6656, 17920, 60, 52),
    ("llama-65b", 8192, 22016, 80, 64),
];

impl LlamaConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a LLaMA config.json", path.display()))?;
        config
            .check()
            .with_context(|| format!("{}", path.display()))?;
        Ok(config)
    }

    /// A published LLaMA-1 shape by name (`llama-7b`, ...): vocabulary 32,000, untied head.
    pub fn preset(name: &str) -> Option<Self> {
        let &(_, hidden, intermediate, layers, heads) =
            LLAMA_PRESETS.iter().find(|p| p.0 == name)?;
        Some(Self {
            vocab_size: 32_000,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: None,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        })
    }

    /// Rejects shapes the decoder cannot run.
    pub fn check(&self) -> Result<()> {
        let heads = self.num_attention_heads;
        if heads == 0 || !self.hidden_size.is_multiple_of(heads) {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {heads}",
                self.hidden_size
            );
        }
        if !heads.is_multiple_of(self.kv_heads()) {
            bail!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {}",
                self.kv_heads()
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!(
                "head dimension {} is odd; rotary embeddings need pairs",
                self.head_dim()
            );
        }
        Ok(())
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Every tensor with transformers' `LlamaForCausalLM` name and its shape, in architecture
    /// order (no `lm_head.weight` when the embeddings are tied).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let kv = self.kv_heads() * self.head_dim();
        let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for layer in 0..self.num_hidden_layers {
            let p = format!("model.layers.{layer}");
            for (name, shape) in [
                ("input_layernorm.weight", vec![h]),
                ("self_attn.q_proj.weight", vec![h, h]),
                ("self_attn.k_proj.weight", vec![kv, h]),
                ("self_attn.v_proj.weight", vec![kv, h]),
                ("self_attn.o_proj.weight", vec![h, h]),
                ("post_attention_layernorm.weight", vec![h]),
                ("mlp.gate_proj.weight", vec![i, h]),
                ("mlp.up_proj.weight", vec![i, h]),
                ("mlp.down_proj.weight", vec![h, i]),
            ] {
                shapes.push((format!("{p}.{name}"), shape));
            }
        }
        shapes.push(("model.norm.weight".into(), vec![h]));
        if !self.tie_word_embeddings {
            shapes.push(("lm_head.weight".into(), vec![v, h]));
        }
        shapes
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn parameters(&self) -> u64 {
        self.tensor_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum()
    }
}
