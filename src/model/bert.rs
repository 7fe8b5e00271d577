//! The BERT family encoder (BERT, MiniLM, RoBERTa) with its sequence-classification head, as a
//! plain struct built from a `VarBuilder` over the weight map, plus the method's increments.
//!
//! Two forward passes read these structs:
//! - the hand-written pass (`crate::backprop::bert`), THE forward of sift-lab: evaluation
//!   (`backprop::logits`) and training (`backprop::loss_and_gradients`) run it, on the batch's real
//!   tokens only, keeping what its backward pass needs;
//! - [`SequenceClassifier::forward`] here, built from candle ops and the kernels' candle ops
//!   (`crate::kernels`), which candle's autograd differentiates. It is the reference the tests
//!   check the hand-written pass against (`tests/train.rs`, f64, every method), and the
//!   fallback for what that pass does not cover (activations other than GELU-erf, float types
//!   other than f32/f64, a padded first token).
//!
//! The weights are read once, into these structs; neither pass re-derives them. The two passes
//! are kept separate on purpose: the candle graph is an independent check of the hand-written
//! backward, so the pass must not be built from it (nor the graph from the pass).
//!
//! In the candle-graph forward, attention softmax (with its scale and padding mask) and GELU
//! are sift-lab's own fused kernels in both modes; the modes differ in the layer norm (see
//! [`Mode`]).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::{Activation, EncoderConfig, Family};
use super::increment::Increments;
use super::layers::{activate, LayerNorm, Linear, Mode};
use crate::kernels;

#[derive(Debug, Clone)]
pub(crate) struct Embeddings {
    pub(crate) word: Tensor,
    pub(crate) position: Tensor,
    pub(crate) token_type: Tensor,
    pub(crate) layer_norm: LayerNorm,
    pub(crate) family: Family,
    pub(crate) pad_id: u32,
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
    pub(crate) fn position_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
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
pub(crate) struct Layer {
    pub(crate) query: Linear,
    pub(crate) key: Linear,
    pub(crate) value: Linear,
    pub(crate) attention_output: Linear,
    pub(crate) attention_norm: LayerNorm,
    pub(crate) intermediate: Linear,
    pub(crate) output: Linear,
    pub(crate) output_norm: LayerNorm,
    pub(crate) num_heads: usize,
    pub(crate) activation: Activation,
}

impl Layer {
    fn new(vb: VarBuilder, increments: &Increments, c: &EncoderConfig) -> Result<Self> {
        let h = c.hidden_size;
        let attn = vb.pp("attention");
        Ok(Self {
            query: Linear::new(attn.pp("self.query"), increments, h, h)?,
            key: Linear::new(attn.pp("self.key"), increments, h, h)?,
            value: Linear::new(attn.pp("self.value"), increments, h, h)?,
            attention_output: Linear::new(attn.pp("output.dense"), increments, h, h)?,
            attention_norm: LayerNorm::new(attn.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            intermediate: Linear::new(
                vb.pp("intermediate.dense"),
                increments,
                h,
                c.intermediate_size,
            )?,
            output: Linear::new(vb.pp("output.dense"), increments, c.intermediate_size, h)?,
            output_norm: LayerNorm::new(vb.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            num_heads: c.num_attention_heads,
            activation: c.activation().map_err(candle_core::Error::wrap)?,
        })
    }

    /// The six linear layers, in forward order: q, k, v, attention output, intermediate, output.
    pub(crate) fn linears(&self) -> [&Linear; 6] {
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
        let context = kernels::attention::attention(&q, &k, &v, mask_bias, self.num_heads)?;
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
pub(crate) enum Head {
    /// BERT: tanh(pooler(h_[CLS])) → classifier.
    Bert { pooler: Linear, classifier: Linear },
    /// RoBERTa: out_proj(tanh(dense(h_<s>))).
    Roberta { dense: Linear, out_proj: Linear },
}

impl Head {
    fn new(
        vb: VarBuilder,
        increments: &Increments,
        family: Family,
        hidden: usize,
        num_labels: usize,
    ) -> Result<Self> {
        Ok(match family {
            Family::Bert => Head::Bert {
                pooler: Linear::new(vb.pp("pooler.dense"), increments, hidden, hidden)?,
                classifier: Linear::new(vb.pp("classifier"), increments, hidden, num_labels)?,
            },
            Family::Roberta => Head::Roberta {
                dense: Linear::new(vb.pp("classifier.dense"), increments, hidden, hidden)?,
                out_proj: Linear::new(
                    vb.pp("classifier.out_proj"),
                    increments,
                    hidden,
                    num_labels,
                )?,
            },
        })
    }

    /// The two linear layers: (pooler, classifier) for BERT, (dense, out_proj) for RoBERTa.
    /// Both apply tanh between them.
    pub(crate) fn linears(&self) -> (&Linear, &Linear) {
        match self {
            Head::Bert { pooler, classifier } => (pooler, classifier),
            Head::Roberta { dense, out_proj } => (dense, out_proj),
        }
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
    pub(crate) embeddings: Embeddings,
    pub(crate) layers: Vec<Layer>,
    pub(crate) head: Head,
    pub num_labels: usize,
}

impl SequenceClassifier {
    /// The classifier over `vb`'s tensors, its linear layers carrying the increments
    /// `increments` holds for their weights.
    pub fn new(
        vb: VarBuilder,
        increments: &Increments,
        config: &EncoderConfig,
        num_labels: usize,
    ) -> Result<Self> {
        let family = config.family().map_err(candle_core::Error::wrap)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::new(vb.pp(format!("encoder.layer.{i}")), increments, config))
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings: Embeddings::new(vb.pp("embeddings"), config)?,
            layers,
            head: Head::new(
                vb.clone(),
                increments,
                family,
                config.hidden_size,
                num_labels,
            )?,
            num_labels,
        })
    }

    /// Every linear layer: the encoder's, layer by layer, then the head's.
    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let (dense, out_proj) = self.head.linears();
        let encoder = self.layers.iter().flat_map(|l| l.linears());
        encoder.chain([dense, out_proj]).collect()
    }

    /// Logits (B, num_labels) for a padded batch; `attention_mask` is (B, T) with 1 at tokens:
    /// the candle-graph forward (the autograd reference and fallback; see the module docs).
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
