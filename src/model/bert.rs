//! The BERT family encoder (BERT, MiniLM, RoBERTa) with its sequence-classification head, as a
//! plain struct built from a `VarBuilder` over a name → tensor map.
//!
//! Attention softmax (with its scale and padding mask) and GELU are sift-lab's own fused,
//! vectorised kernels (`fused.rs`) in both modes. The two modes differ in the layer norm:
//! - [`Mode::Inference`] uses candle's fused CPU layer norm, which records no backward pass;
//! - [`Mode::Training`] uses sift-lab's own, which does, so that `backward()` reaches every
//!   weight (candle's fused ops silently drop the gradient).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::{Activation, EncoderConfig, Family};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Inference,
    Training,
}

/// The names, under a linear layer's prefix, of the increments a fine-tuning method adds to
/// its weight (see [`Linear`]).
pub mod increment {
    /// Sparse Δ: u32 row and column of each selected entry, and the trainable values.
    pub const DELTA_ROWS: &str = "delta.rows";
    pub const DELTA_COLS: &str = "delta.cols";
    pub const DELTA_VALUES: &str = "delta.values";
    /// LoRA: A (r × in), B (out × r) and the scalar α / r.
    pub const LORA_A: &str = "lora.a";
    pub const LORA_B: &str = "lora.b";
    pub const LORA_SCALE: &str = "lora.scale";
}

#[derive(Debug, Clone)]
pub(super) struct SparseDelta {
    pub(super) rows: Vec<u32>,
    pub(super) cols: Vec<u32>,
    pub(super) values: Tensor,
}

#[derive(Debug, Clone)]
pub(super) struct LoraFactors {
    pub(super) a: Tensor,
    pub(super) b: Tensor,
    pub(super) scale: f64,
}

/// y = x (W + Δ)ᵀ + b over the last dimension, for inputs of any rank, where the increment Δ is
/// absent (plain or full fine-tuning), sparse (SIFT, random) or low-rank (LoRA: Δ = s·B·A).
/// Δ is never materialised: its product with x is computed from its factors, and a frozen W
/// gets no gradient computed at all.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
    pub(super) delta: Option<SparseDelta>,
    pub(super) lora: Option<LoraFactors>,
}

impl Linear {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        use increment::*;
        let delta = if vb.contains_tensor(DELTA_VALUES) {
            Some(SparseDelta {
                rows: vb.get_unchecked_dtype(DELTA_ROWS, DType::U32)?.to_vec1()?,
                cols: vb.get_unchecked_dtype(DELTA_COLS, DType::U32)?.to_vec1()?,
                values: vb.get_unchecked(DELTA_VALUES)?,
            })
        } else {
            None
        };
        let lora = if vb.contains_tensor(LORA_A) {
            let scale = vb
                .get_unchecked_dtype(LORA_SCALE, DType::F64)?
                .to_scalar::<f64>()?;
            Some(LoraFactors {
                a: vb.get_unchecked(LORA_A)?,
                b: vb.get_unchecked(LORA_B)?,
                scale,
            })
        } else {
            None
        };
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: vb.get(out_dim, "bias")?,
            delta,
            lora,
        })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let out_dim = self.weight.dim(0)?;
        let x2d = x.reshape((x.elem_count() / in_dim, in_dim))?;
        let mut y = match &self.delta {
            // Frozen W plus a trained sparse Δ: one op, no dW, only the k sampled products.
            Some(d) if !self.weight.track_op() => super::ops::sparse_linear(
                &x2d,
                &self.weight,
                &d.rows,
                &d.cols,
                &d.values,
                &self.bias,
            )?,
            Some(_) => {
                candle_core::bail!("a sparse increment on a trained weight is not supported")
            }
            // One GEMM accumulating onto the bias; no dW for a frozen weight.
            None => super::ops::linear(&x2d, &self.weight, &self.bias)?,
        };
        if let Some(l) = &self.lora {
            y = (y + (x2d.matmul(&l.a.t()?)?.matmul(&l.b.t()?)? * l.scale)?)?;
        }
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = out_dim;
        y.reshape(out_dims)
    }
}

#[derive(Debug, Clone)]
pub(super) struct LayerNorm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) eps: f64,
}

impl LayerNorm {
    fn new(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Inference => {
                candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
            }
            Mode::Training => super::fused::layer_norm(x, &self.weight, &self.bias, self.eps),
        }
    }
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::GeluErf => super::fused::gelu_erf(x),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
        Activation::Silu => x.silu(),
    }
}

#[derive(Debug, Clone)]
pub(super) struct Embeddings {
    pub(super) word: Tensor,
    pub(super) position: Tensor,
    pub(super) token_type: Tensor,
    pub(super) layer_norm: LayerNorm,
    pub(super) family: Family,
    pub(super) pad_id: u32,
}

impl Embeddings {
    fn new(vb: VarBuilder, c: &EncoderConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            word: vb.get((c.vocab_size, h), "word_embeddings.weight")?,
            position: vb.get((c.max_position_embeddings, h), "position_embeddings.weight")?,
            token_type: vb.get((c.type_vocab_size, h), "token_type_embeddings.weight")?,
            layer_norm: LayerNorm::new(vb.pp("LayerNorm"), h, c.layer_norm_eps)?,
            family: c.family().map_err(candle_core::Error::wrap)?,
            pad_id: c.pad_id(),
        })
    }

    /// Position ids: 0..T for BERT; for RoBERTa, pad + 1 + running count of non-pad tokens,
    /// and pad at padding positions (transformers' `create_position_ids_from_input_ids`).
    pub(super) fn position_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let ids: Vec<u32> = match self.family {
            Family::Bert => (0..batch).flat_map(|_| 0..seq as u32).collect(),
            Family::Roberta => {
                let rows = input_ids.to_vec2::<u32>()?;
                rows.iter()
                    .flat_map(|row| {
                        let mut count = 0u32;
                        row.iter()
                            .map(|&id| {
                                if id == self.pad_id {
                                    self.pad_id
                                } else {
                                    count += 1;
                                    self.pad_id + count
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect()
            }
        };
        Tensor::from_vec(ids, (batch, seq), input_ids.device())
    }

    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, mode: Mode) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let h = self.word.dim(1)?;
        let lookup = |table: &Tensor, ids: &Tensor| -> Result<Tensor> {
            table
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((batch, seq, h))
        };
        let positions = self.position_ids(input_ids)?;
        let x = (lookup(&self.word, input_ids)? + lookup(&self.token_type, token_type_ids)?)?;
        let x = (x + lookup(&self.position, &positions)?)?;
        self.layer_norm.forward(&x, mode)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Layer {
    pub(super) query: Linear,
    pub(super) key: Linear,
    pub(super) value: Linear,
    pub(super) attention_output: Linear,
    pub(super) attention_norm: LayerNorm,
    pub(super) intermediate: Linear,
    pub(super) output: Linear,
    pub(super) output_norm: LayerNorm,
    pub(super) num_heads: usize,
    pub(super) activation: Activation,
}

impl Layer {
    fn new(vb: VarBuilder, c: &EncoderConfig) -> Result<Self> {
        let h = c.hidden_size;
        let attn = vb.pp("attention");
        Ok(Self {
            query: Linear::new(attn.pp("self.query"), h, h)?,
            key: Linear::new(attn.pp("self.key"), h, h)?,
            value: Linear::new(attn.pp("self.value"), h, h)?,
            attention_output: Linear::new(attn.pp("output.dense"), h, h)?,
            attention_norm: LayerNorm::new(attn.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            intermediate: Linear::new(vb.pp("intermediate.dense"), h, c.intermediate_size)?,
            output: Linear::new(vb.pp("output.dense"), c.intermediate_size, h)?,
            output_norm: LayerNorm::new(vb.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            num_heads: c.num_attention_heads,
            activation: c.activation().map_err(candle_core::Error::wrap)?,
        })
    }

    /// The six linear layers, in forward order: q, k, v, attention output, intermediate, output.
    pub(super) fn linears(&self) -> [&Linear; 6] {
        [
            &self.query,
            &self.key,
            &self.value,
            &self.attention_output,
            &self.intermediate,
            &self.output,
        ]
    }

    /// `x`: (B·T, hidden), one row per token; `mask_bias`: (B, T), 0 at tokens and a large
    /// negative number at padding.
    fn forward(&self, x: &Tensor, mask_bias: &Tensor, mode: Mode) -> Result<Tensor> {
        let q = self.query.forward(x)?;
        let k = self.key.forward(x)?;
        let v = self.value.forward(x)?;
        let context = super::attention::attention(&q, &k, &v, mask_bias, self.num_heads)?;
        let attended = self
            .attention_norm
            .forward(&(self.attention_output.forward(&context)? + x)?, mode)?;
        let inner = activate(&self.intermediate.forward(&attended)?, self.activation)?;
        self.output_norm
            .forward(&(self.output.forward(&inner)? + attended)?, mode)
    }
}

/// The task head on top of the encoder.
#[derive(Debug, Clone)]
pub(super) enum Head {
    /// BERT: tanh(pooler(h_[CLS])) → classifier.
    Bert { pooler: Linear, classifier: Linear },
    /// RoBERTa: out_proj(tanh(dense(h_<s>))).
    Roberta { dense: Linear, out_proj: Linear },
}

impl Head {
    fn new(vb: VarBuilder, family: Family, hidden: usize, num_labels: usize) -> Result<Self> {
        Ok(match family {
            Family::Bert => Head::Bert {
                pooler: Linear::new(vb.pp("pooler.dense"), hidden, hidden)?,
                classifier: Linear::new(vb.pp("classifier"), hidden, num_labels)?,
            },
            Family::Roberta => Head::Roberta {
                dense: Linear::new(vb.pp("classifier.dense"), hidden, hidden)?,
                out_proj: Linear::new(vb.pp("classifier.out_proj"), hidden, num_labels)?,
            },
        })
    }

    fn forward(&self, first_token: &Tensor) -> Result<Tensor> {
        match self {
            Head::Bert { pooler, classifier } => {
                classifier.forward(&pooler.forward(first_token)?.tanh()?)
            }
            Head::Roberta { dense, out_proj } => {
                out_proj.forward(&dense.forward(first_token)?.tanh()?)
            }
        }
    }
}

/// Encoder + head: transformers' `BertForSequenceClassification` / `RobertaForSequenceClassification`
/// (without dropout: sift-lab's evaluations and gradients are deterministic).
#[derive(Debug, Clone)]
pub struct SequenceClassifier {
    pub(super) embeddings: Embeddings,
    pub(super) layers: Vec<Layer>,
    pub(super) head: Head,
    pub num_labels: usize,
}

impl SequenceClassifier {
    pub fn new(vb: VarBuilder, config: &EncoderConfig, num_labels: usize) -> Result<Self> {
        let family = config.family().map_err(candle_core::Error::wrap)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::new(vb.pp(format!("encoder.layer.{i}")), config))
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings: Embeddings::new(vb.pp("embeddings"), config)?,
            layers,
            head: Head::new(vb.clone(), family, config.hidden_size, num_labels)?,
            num_labels,
        })
    }

    /// Logits (B, num_labels) for a padded batch; `attention_mask` is (B, T) with 1 at tokens.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let hidden = self.embeddings.forward(input_ids, token_type_ids, mode)?;
        let dtype = hidden.dtype();
        let (batch, seq) = attention_mask.dims2()?;
        // 0 where a token may be attended to, -1e30 at padding (exp underflows to exactly 0,
        // as with transformers' finfo.min).
        let mask_bias = attention_mask.to_dtype(dtype)?.affine(1e30, -1e30)?;
        // Token rows (B·T, hidden) through the layers: no reshapes inside.
        let width = hidden.dim(2)?;
        let mut hidden = hidden.reshape((batch * seq, width))?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &mask_bias, mode)?;
        }
        let first_token = hidden
            .reshape((batch, seq, width))?
            .narrow(1, 0, 1)?
            .squeeze(1)?;
        self.head.forward(&first_token)
    }
}

/// Per-example loss: cross-entropy for classification (u32 labels), squared error for
/// regression (f32 labels, one output), as transformers' sequence-classification models.
pub fn per_example_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    if labels.dtype() == DType::U32 {
        let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        log_probs
            .gather(&labels.unsqueeze(1)?, 1)?
            .squeeze(1)?
            .neg()
    } else {
        (logits.squeeze(1)? - labels.to_dtype(logits.dtype())?)?.sqr()
    }
}

/// Mean loss over the batch: what training differentiates.
pub fn mean_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    per_example_loss(logits, labels)?.mean_all()
}
