//! GGUF files (llama.cpp's format) as a LLaMA weight map with transformers' names, the config
//! from the file's metadata and the tokenizer from its vocabulary and merges.
//!
//! Every tensor is dequantized to f32 (`QTensor::dequantize`). llama.cpp's converter stores
//! q_proj and k_proj with the rows of each head permuted (its rotary pairs adjacent dimensions,
//! transformers' pairs the two halves of a head); [`unpermute_rows`] undoes that, so the model
//! runs transformers' rotary layout on every checkpoint.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::WeightMap;

/// A decoder read from a GGUF file.
pub struct GgufModel {
    pub config: LlamaConfig,
    pub weights: WeightMap,
    pub tokenizer: tokenizers::Tokenizer,
}

/// Reads `path`: metadata → config, tensors → f32 weight map (transformers' names, q/k rows in
/// transformers' order), vocabulary → tokenizer.
pub fn load(path: &Path, device: &Device) -> Result<GgufModel> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = Content::read(&mut file)
        .map_err(|e| anyhow::anyhow!("{}: not a GGUF file ({e})", path.display()))?;
    let config = config_from_metadata(&content.metadata)
        .with_context(|| format!("{}: GGUF metadata", path.display()))?;
    let mut weights = WeightMap::new();
    for name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(name) else {
            // rope_freqs and other llama.cpp-only tables: the model computes its own.
            continue;
        };
        let tensor = content
            .tensor(&mut file, name, device)
            .and_then(|q| q.dequantize(device))
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))?;
        let tensor = if hf.ends_with("q_proj.weight") {
            unpermute_rows(&tensor, config.num_attention_heads)?
        } else if hf.ends_with("k_proj.weight") {
            unpermute_rows(&tensor, config.kv_heads())?
        } else {
            tensor
        };
        weights.insert(hf, tensor);
    }
    let mut config = config;
    config.tie_word_embeddings = !weights.contains_key("lm_head.weight");
    let tokenizer = tokenizer_from_metadata(&content.metadata)
        .with_context(|| format!("{}: tokenizer metadata", path.display()))?;
    Ok(GgufModel {
        config,
        weights,
        tokenizer,
    })
}

fn value<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value> {
    metadata
        .get(key)
        .with_context(|| format!("no metadata key {key}"))
}

fn count(metadata: &HashMap<String, Value>, key: &str) -> Result<usize> {
    let v = value(metadata, key)?;
    let n = match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I8(x) => *x as u64,
        Value::I16(x) => *x as u64,
        Value::I32(x) => *x as u64,
        Value::I64(x) => *x as u64,
        other => bail!("{key} is {other:?}, not a count"),
    };
    Ok(n as usize)
}

fn float(metadata: &HashMap<String, Value>, key: &str) -> Result<f64> {
    match value(metadata, key)? {
        Value::F32(x) => Ok(*x as f64),
        Value::F64(x) => Ok(*x),
        other => bail!("{key} is {other:?}, not a number"),
    }
}

fn strings(metadata: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
    value(metadata, key)?
        .to_vec()
        .map_err(|_| anyhow::anyhow!("{key} is not an array"))?
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| anyhow::anyhow!("{key} holds a non-string"))
        })
        .collect()
}

/// The LLaMA config of a GGUF file's `llama.*` keys.
pub fn config_from_metadata(metadata: &HashMap<String, Value>) -> Result<LlamaConfig> {
    let arch = value(metadata, "general.architecture")?
        .to_string()
        .map_err(|_| anyhow::anyhow!("general.architecture is not text"))?
        .clone();
    if arch != "llama" {
        bail!("architecture {arch:?}: sift-lab reads LLaMA-architecture GGUF files only");
    }
    let key = |k: &str| format!("llama.{k}");
    let vocab_size = match count(metadata, &key("vocab_size")) {
        Ok(n) => n,
        Err(_) => strings(metadata, "tokenizer.ggml.tokens")?.len(),
    };
    let heads = count(metadata, &key("attention.head_count"))?;
    let config = LlamaConfig {
        vocab_size,
        hidden_size: count(metadata, &key("embedding_length"))?,
        intermediate_size: count(metadata, &key("feed_forward_length"))?,
        num_hidden_layers: count(metadata, &key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: Some(
            count(metadata, &key("attention.head_count_kv")).unwrap_or(heads),
        ),
        rms_norm_eps: float(metadata, &key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: float(metadata, &key("rope.freq_base")).unwrap_or(10_000.0),
        max_position_embeddings: count(metadata, &key("context_length"))?,
        tie_word_embeddings: false,
        bos_token_id: count(metadata, "tokenizer.ggml.bos_token_id")
            .ok()
            .map(|n| n as u32),
        eos_token_id: count(metadata, "tokenizer.ggml.eos_token_id")
            .ok()
            .map(|n| n as u32),
    };
    config.check()?;
    Ok(config)
}

/// transformers' name of a llama.cpp tensor name, or `None` for tensors the model does not use.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's `permute(w, heads)`: within each head, rows (pair, 2) → (2, pair), i.e.
/// w.reshape(heads, half, 2, in).transpose(1, 2).reshape(out, in).
pub fn unpermute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    if out_dim % (2 * heads) != 0 {
        bail!("{out_dim} rows do not split into {heads} heads of rotary pairs");
    }
    Ok(w.reshape((heads, out_dim / heads / 2, 2, in_dim))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out_dim, in_dim))?)
}

/// The inverse of [`unpermute_rows`]: llama.cpp's converter's permutation.
pub fn permute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    Ok(w.reshape((heads, 2, out_dim / heads / 2, in_dim))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out_dim, in_dim))?)
}

/// A byte-level BPE tokenizer from `tokenizer.ggml.*` (model `gpt2`): the vocabulary, the merges,
/// control tokens as special tokens. The pre-tokenizer for `tokenizer.ggml.pre = smollm` splits
/// digits one by one before GPT-2's byte-level split, as SmolLM2's own tokenizer.json does.
pub fn tokenizer_from_metadata(metadata: &HashMap<String, Value>) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::{AddedToken, PreTokenizerWrapper};

    let model = value(metadata, "tokenizer.ggml.model")?
        .to_string()
        .map_err(|_| anyhow::anyhow!("tokenizer.ggml.model is not text"))?
        .clone();
    if model != "gpt2" {
        bail!("tokenizer model {model:?}: only byte-level BPE (gpt2) GGUF vocabularies are read; pass a model directory with tokenizer.json instead");
    }
    let tokens = strings(metadata, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(metadata, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .with_context(|| format!("merge {m:?} is not two tokens"))
        })
        .collect::<Result<_>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow::anyhow!("BPE: {e}"))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre = value(metadata, "tokenizer.ggml.pre")
        .ok()
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    let pre_tokenizer: PreTokenizerWrapper = if pre == "smollm" {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    // Control tokens (type 3: <|im_start|>, <|endoftext|>, ...) are matched whole, never split.
    if let Ok(types) = value(metadata, "tokenizer.ggml.token_type").and_then(|v| {
        v.to_vec()
            .map_err(|_| anyhow::anyhow!("token_type is not an array"))
    }) {
        let specials: Vec<AddedToken> = types
            .iter()
            .zip(&tokens)
            .filter(|(t, _)| matches!(t, Value::I32(3) | Value::U32(3)))
            .map(|(_, token)| AddedToken::from(token.clone(), true))
            .collect();
        tokenizer.add_special_tokens(&specials);
    }
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_transformers() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").unwrap(),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").unwrap(),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    /// Head rows (a0 a1 a2 a3 | b0 b1 b2 b3) with halves (a0 a1 | a2 a3): llama.cpp stores
    /// them interleaved (a0 a2 a1 a3), and unpermuting restores the order.
    #[test]
    fn unpermute_inverts_the_converter() {
        let rows: Vec<f32> = (0..8).map(|r| r as f32).collect();
        let w = Tensor::from_vec(rows, (8, 1), &Device::Cpu).unwrap();
        let permuted = permute_rows(&w, 2).unwrap();
        let flat: Vec<f32> = permuted.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(flat, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        let back: Vec<f32> = unpermute_rows(&permuted, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(back, (0..8).map(|r| r as f32).collect::<Vec<_>>());
    }
}
