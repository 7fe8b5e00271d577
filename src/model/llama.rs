//! The LLaMA-architecture causal LM (LLaMA 1/2, SmolLM2, ...): RMSNorm, rotary embeddings in
//! transformers' layout (rotate_half: the first and second halves of a head pair up), grouped-
//! query attention, SwiGLU, tied or untied embeddings; as a plain struct built from the name →
//! tensor map (transformers' `LlamaForCausalLM` names), plus a method's increments.
//!
//! [`Llama::forward`] returns the logits of every position and is built from candle ops that
//! candle's autograd differentiates in [`Mode::Training`] (its own RMSNorm, rotary and softmax
//! kernels record no backward pass); [`Mode::Inference`] uses candle's fused kernels instead.
//! [`Llama::forward_cached`] decodes incrementally with a [`KvCache`] (generation).
//!
//! Batches are right-padded: with causal attention a position never sees the padding after it,
//! so the logits of real tokens do not depend on it.

use candle_core::{DType, Device, Module, Result, Tensor, D};

use super::config::LlamaConfig;
use super::increment::Increments;
use super::layers::{Linear, Mode};
use super::WeightMap;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    /// y = x / sqrt(mean(x²) + eps) · w over the last dimension.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Inference if x.dtype() == DType::F32 => {
                candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32)
            }
            _ => {
                let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
                let inv = (mean_square + self.eps)?.sqrt()?.recip()?;
                x.broadcast_mul(&inv)?.broadcast_mul(&self.weight)
            }
        }
    }
}

/// cos and sin of the rotary angles, (positions × head_dim/2).
#[derive(Debug, Clone)]
pub struct Rotary {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Rotary {
    pub fn new(
        config: &LlamaConfig,
        positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = config.head_dim() / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| {
                1.0 / config
                    .rope_theta
                    .powf(2.0 * i as f64 / config.head_dim() as f64)
            })
            .collect();
        let mut angles = Vec::with_capacity(positions * half);
        for p in 0..positions {
            angles.extend(inv_freq.iter().map(|f| p as f64 * f));
        }
        let angles = Tensor::from_vec(angles, (positions, half), device)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }

    /// Rotates x (batch, heads, seq, head_dim) for positions start..start+seq:
    /// (x1, x2) → (x1·cos − x2·sin, x2·cos + x1·sin), x1, x2 the two halves.
    pub fn apply(&self, x: &Tensor, start: usize, mode: Mode) -> Result<Tensor> {
        let (_, _, seq, dim) = x.dims4()?;
        let cos = self.cos.narrow(0, start, seq)?;
        let sin = self.sin.narrow(0, start, seq)?;
        match mode {
            Mode::Inference => candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin),
            Mode::Training => {
                let half = dim / 2;
                let x1 = x.narrow(D::Minus1, 0, half)?;
                let x2 = x.narrow(D::Minus1, half, half)?;
                let rotated_1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
                let rotated_2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
                Tensor::cat(&[rotated_1, rotated_2], D::Minus1)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_norm: RmsNorm,
    pub attention: Attention,
    pub post_attention_norm: RmsNorm,
    pub mlp: Mlp,
}

/// Keys and values of the positions decoded so far, per layer: (batch, kv_heads, seen, head_dim).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    entries: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.entries
            .first()
            .and_then(|e| e.as_ref())
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    pub embed: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// (vocab × hidden): `embed` itself when the embeddings are tied.
    pub lm_head: Tensor,
    pub rotary: Rotary,
}

fn get(weights: &WeightMap, name: &str, shape: &[usize]) -> Result<Tensor> {
    let t = weights
        .get(name)
        .ok_or_else(|| candle_core::Error::Msg(format!("the weights have no {name}")))?;
    if t.dims() != shape {
        candle_core::bail!("{name}: shape {:?}, expected {shape:?}", t.dims());
    }
    Ok(t.clone())
}

impl Llama {
    /// The model over a weight map with transformers' names; each projection adds the increment
    /// `increments` holds for its weight. Tensors are used as they are (Vars keep their graph).
    pub fn new(config: &LlamaConfig, weights: &WeightMap, increments: &Increments) -> Result<Self> {
        config.check().map_err(candle_core::Error::wrap)?;
        let (h, i, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let embed = get(weights, "model.embed_tokens.weight", &[v, h])?;
        let (dtype, device) = (embed.dtype(), embed.device().clone());
        let kv = config.kv_heads() * config.head_dim();
        let linear = |name: String, out_dim: usize, in_dim: usize| -> Result<Linear> {
            let weight = get(weights, &name, &[out_dim, in_dim])?;
            Ok(Linear {
                // LLaMA has no biases; the shared linear kernels take one.
                bias: Tensor::zeros(out_dim, dtype, &device)?,
                increment: increments.get(&name).cloned(),
                weight,
            })
        };
        let norm = |name: String| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: get(weights, &name, &[h])?,
                eps: config.rms_norm_eps,
            })
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(DecoderLayer {
                input_norm: norm(format!("{p}.input_layernorm.weight"))?,
                attention: Attention {
                    q: linear(format!("{p}.self_attn.q_proj.weight"), h, h)?,
                    k: linear(format!("{p}.self_attn.k_proj.weight"), kv, h)?,
                    v: linear(format!("{p}.self_attn.v_proj.weight"), kv, h)?,
                    o: linear(format!("{p}.self_attn.o_proj.weight"), h, h)?,
                    heads: config.num_attention_heads,
                    kv_heads: config.kv_heads(),
                    head_dim: config.head_dim(),
                },
                post_attention_norm: norm(format!("{p}.post_attention_layernorm.weight"))?,
                mlp: Mlp {
                    gate: linear(format!("{p}.mlp.gate_proj.weight"), i, h)?,
                    up: linear(format!("{p}.mlp.up_proj.weight"), i, h)?,
                    down: linear(format!("{p}.mlp.down_proj.weight"), h, i)?,
                },
            });
        }
        let lm_head = if config.tie_word_embeddings {
            embed.clone()
        } else {
            get(weights, "lm_head.weight", &[v, h])?
        };
        let applied = layers
            .iter()
            .flat_map(|l| l.linears())
            .filter(|l| l.increment.is_some())
            .count();
        if applied != increments.len() {
            candle_core::bail!(
                "{} increments, but only {applied} are on projection weights of the model",
                increments.len()
            );
        }
        Ok(Self {
            rotary: Rotary::new(config, config.max_position_embeddings, dtype, &device)?,
            norm: norm("model.norm.weight".into())?,
            config: config.clone(),
            embed,
            layers,
            lm_head,
        })
    }

    /// Logits (batch, seq, vocab) of every position of right-padded `ids` (batch, seq).
    pub fn forward(&self, ids: &Tensor, mode: Mode) -> Result<Tensor> {
        self.run(ids, 0, None, mode)
    }

    /// Logits (batch, seq, vocab) of `ids` (batch, seq) placed after the positions in `cache`,
    /// which they are appended to. The first call passes the prompt, each later one new tokens.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.entries.is_empty() {
            cache.entries = vec![None; self.layers.len()];
        }
        let start = cache.len();
        self.run(ids, start, Some(cache), Mode::Inference)
    }

    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            batch,
            seq,
            self.config.hidden_size,
        ))
    }

    fn run(
        &self,
        ids: &Tensor,
        start: usize,
        mut cache: Option<&mut KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        if start + seq > self.config.max_position_embeddings {
            candle_core::bail!(
                "{} positions, but the model has rotary angles for {}",
                start + seq,
                self.config.max_position_embeddings
            );
        }
        let mut x = self.embed_ids(ids)?;
        let mask = causal_mask(seq, start, x.dtype(), x.device())?;
        for (l, layer) in self.layers.iter().enumerate() {
            let entry = cache.as_deref_mut().map(|c| &mut c.entries[l]);
            x = layer.forward(&x, &self.rotary, start, &mask, entry, mode)?;
        }
        let x = self.norm.forward(&x, mode)?;
        let h = self.config.hidden_size;
        x.reshape((batch * seq, h))?
            .matmul(&self.lm_head.t()?)?
            .reshape((batch, seq, self.config.vocab_size))
    }

    /// Logits (batch, vocab) of one position per row of right-padded `ids` (batch, seq):
    /// `positions[b]` in row b (e.g. its last real token). Only those rows meet the LM head.
    pub fn forward_at(&self, ids: &Tensor, positions: &[usize], mode: Mode) -> Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        if positions.len() != batch || positions.iter().any(|&p| p >= seq) {
            candle_core::bail!(
                "forward_at: {} positions for {batch} rows of {seq}",
                positions.len()
            );
        }
        let mut x = self.embed_ids(ids)?;
        let mask = causal_mask(seq, 0, x.dtype(), x.device())?;
        for layer in &self.layers {
            x = layer.forward(&x, &self.rotary, 0, &mask, None, mode)?;
        }
        let rows: Vec<u32> = positions
            .iter()
            .enumerate()
            .map(|(b, &p)| (b * seq + p) as u32)
            .collect();
        let rows = Tensor::from_vec(rows, batch, x.device())?;
        let picked = x
            .reshape((batch * seq, self.config.hidden_size))?
            .index_select(&rows, 0)?;
        self.norm.forward(&picked, mode)?.matmul(&self.lm_head.t()?)
    }
}

/// (seq × (start + seq)) additive mask: query i (position start + i) sees keys 0..=start + i.
fn causal_mask(seq: usize, start: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let total = start + seq;
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (seq, total), device)?.to_dtype(dtype)
}

impl DecoderLayer {
    pub fn linears(&self) -> [&Linear; 7] {
        let (a, m) = (&self.attention, &self.mlp);
        [&a.q, &a.k, &a.v, &a.o, &m.gate, &m.up, &m.down]
    }

    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        start: usize,
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mode: Mode,
    ) -> Result<Tensor> {
        let normed = self.input_norm.forward(x, mode)?;
        let attended = self
            .attention
            .forward(&normed, rotary, start, mask, cache, mode)?;
        let x = (x + attended)?;
        let normed = self.post_attention_norm.forward(&x, mode)?;
        let m = &self.mlp;
        let hidden = (m.gate.forward(&normed)?.silu()? * m.up.forward(&normed)?)?;
        x + m.down.forward(&hidden)?
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        start: usize,
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (batch, seq, hidden) = x.dims3()?;
        let d = self.head_dim;
        let split = |y: Tensor, heads: usize| -> Result<Tensor> {
            y.reshape((batch, seq, heads, d))?.transpose(1, 2)
        };
        let q = rotary.apply(&split(self.q.forward(x)?, self.heads)?, start, mode)?;
        let mut k = rotary.apply(&split(self.k.forward(x)?, self.kv_heads)?, start, mode)?;
        let mut v = split(self.v.forward(x)?, self.kv_heads)?;
        if let Some(entry) = cache {
            if let Some((k_seen, v_seen)) = entry.as_ref() {
                k = Tensor::cat(&[k_seen, &k.contiguous()?], 2)?;
                v = Tensor::cat(&[v_seen, &v.contiguous()?], 2)?;
            }
            *entry = Some((k.contiguous()?, v.contiguous()?));
        }
        let total = k.dim(2)?;
        // Grouped-query attention without copying keys: the `group` query heads sharing a key
        // head become rows of one (group·seq × d) block.
        let group = self.heads / self.kv_heads;
        let q = q
            .contiguous()?
            .reshape((batch, self.kv_heads, group * seq, d))?;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k.contiguous()?.transpose(2, 3)?.contiguous()?)? * scale)?
            .reshape((batch, self.kv_heads, group, seq, total))?
            .broadcast_add(mask)?;
        let probs = match mode {
            Mode::Inference if scores.dtype() == DType::F32 => {
                candle_nn::ops::softmax_last_dim(&scores)?
            }
            _ => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let out = probs
            .reshape((batch, self.kv_heads, group * seq, total))?
            .matmul(&v.contiguous()?)?
            .reshape((batch, self.heads, seq, d))?
            .transpose(1, 2)?
            .reshape((batch, seq, hidden))?;
        self.o.forward(&out)
    }
}
