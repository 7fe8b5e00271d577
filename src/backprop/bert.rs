//! The training pass of [`SequenceClassifier`] (BERT, MiniLM, RoBERTa): see the `backprop`
//! module docs. Runs on the batch's tokens packed without the padding (see [`Batch`]).

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor};

use super::{
    add_into, grad_store, into_tensors, loss_and_logit_gradient, Gradients, Held, Labels, Params,
};
use crate::kernels::attention;
use crate::kernels::fused::{self, Float};
use crate::model::bert::{mean_loss, SequenceClassifier};
use crate::model::config::Activation;
use crate::model::Mode;

/// The batch's mean loss (as [`mean_loss`]) and the gradient of every trained tensor, keyed as
/// candle's `loss.backward()` keys them (so `GradStore::get(var)` works unchanged).
///
/// What this pass does not cover (see [`covered`]) goes through candle's autograd instead.
pub fn loss_and_gradients(
    model: &SequenceClassifier,
    input_ids: &Tensor,
    token_type_ids: &Tensor,
    attention_mask: &Tensor,
    labels: &Tensor,
) -> Result<(f64, GradStore)> {
    if !covered(model, attention_mask)? {
        let logits = model.forward(input_ids, token_type_ids, attention_mask, Mode::Training)?;
        let loss = mean_loss(&logits, labels)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        return Ok((value, loss.backward()?));
    }
    let batch = Batch::new(
        model,
        input_ids,
        token_type_ids,
        attention_mask,
        Some(labels),
    )?;
    let mut held = Held::default();
    for t in model_tensors(model) {
        held.hold(t)?;
    }
    let (loss, grads) = match model.embeddings.word.dtype() {
        DType::F32 => {
            let (loss, grads) = Pass::<f32>::new(model, &held, &batch).run()?;
            (loss, into_tensors(grads)?)
        }
        _ => {
            let (loss, grads) = Pass::<f64>::new(model, &held, &batch).run()?;
            (loss, into_tensors(grads)?)
        }
    };
    Ok((loss, grad_store(grads)?))
}

/// Logits (B, num_labels) of a padded batch, from the same packed forward pass (no padding
/// rows computed, nothing kept): what evaluation uses. Equals `model.forward` in either mode.
pub fn logits(
    model: &SequenceClassifier,
    input_ids: &Tensor,
    token_type_ids: &Tensor,
    attention_mask: &Tensor,
) -> Result<Tensor> {
    if !covered(model, attention_mask)? {
        return model.forward(input_ids, token_type_ids, attention_mask, Mode::Inference);
    }
    let batch = Batch::new(model, input_ids, token_type_ids, attention_mask, None)?;
    let mut held = Held::default();
    for t in model_tensors(model) {
        held.hold(t)?;
    }
    let device = input_ids.device();
    let shape = (batch.batch, model.num_labels);
    match model.embeddings.word.dtype() {
        DType::F32 => {
            let pass = Pass::<f32>::new(model, &held, &batch);
            Tensor::from_vec(pass.forward(false)?.logits, shape, device)
        }
        _ => {
            let pass = Pass::<f64>::new(model, &held, &batch);
            Tensor::from_vec(pass.forward(false)?.logits, shape, device)
        }
    }
}

/// Whether this pass covers the model and batch; where not (activations other than GELU-erf,
/// float types other than f32 and f64, a padded first token), candle's autograd and ops run.
fn covered(model: &SequenceClassifier, attention_mask: &Tensor) -> Result<bool> {
    let gelu = model
        .layers
        .iter()
        .all(|l| l.activation == Activation::GeluErf);
    let float = matches!(model.embeddings.word.dtype(), DType::F32 | DType::F64);
    // The head reads each example's first token: it must not be padding.
    let first_attended = attention_mask
        .narrow(1, 0, 1)?
        .to_dtype(DType::U32)?
        .min_all()?
        .to_scalar::<u32>()?
        == 1;
    Ok(gelu && float && first_attended)
}

/// Every tensor a model reads, in no particular order.
fn model_tensors(model: &SequenceClassifier) -> Vec<&Tensor> {
    let e = &model.embeddings;
    let mut out = vec![&e.word, &e.position, &e.token_type];
    let norms = model
        .layers
        .iter()
        .flat_map(|l| [&l.attention_norm, &l.output_norm]);
    for n in std::iter::once(&e.layer_norm).chain(norms) {
        out.extend([&n.weight, &n.bias]);
    }
    for l in model.linears() {
        out.extend(l.tensors());
    }
    out
}

/// One padded batch, as plain vectors, and its tokens packed without the padding.
///
/// The pass runs on the packed tokens only: a padding token's key gets attention weight exactly
/// 0 in the padded computation (exp(−1e30) underflows) and its own row reaches no token's
/// output, so dropping it changes no loss and no gradient, and saves its share of every GEMM.
struct Batch {
    batch: usize,
    ids: Vec<u32>,
    types: Vec<u32>,
    positions: Vec<u32>,
    /// The (B·T) flat index of each packed token, example by example.
    kept: Vec<usize>,
    /// Per example: its first packed row and its token count.
    sequences: Vec<(usize, usize)>,
    /// None for evaluation.
    labels: Option<Labels>,
}

impl Batch {
    fn new(
        model: &SequenceClassifier,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<Self> {
        let (batch, seq) = input_ids.dims2()?;
        let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>();
        let mask = flat(attention_mask)?;
        let mut kept = Vec::with_capacity(mask.len());
        let mut sequences = Vec::with_capacity(batch);
        for b in 0..batch {
            let start = kept.len();
            kept.extend((b * seq..(b + 1) * seq).filter(|&n| mask[n] != 0));
            sequences.push((start, kept.len() - start));
        }
        Ok(Self {
            batch,
            ids: flat(input_ids)?,
            types: flat(token_type_ids)?,
            positions: flat(&model.embeddings.position_ids(input_ids)?)?,
            kept,
            sequences,
            labels: match labels {
                None => None,
                Some(l) if l.dtype() == DType::U32 => Some(Labels::Classes(l.to_vec1()?)),
                Some(l) => Some(Labels::Targets(l.to_dtype(DType::F64)?.to_vec1()?)),
            },
        })
    }

    /// Packed tokens.
    fn rows(&self) -> usize {
        self.kept.len()
    }
}

/// What the forward pass computes and keeps for the backward pass.
struct Forward<T> {
    /// Embedding sums before their layer norm.
    embedded: Vec<T>,
    tapes: Vec<LayerTape<T>>,
    /// The first token's final hidden state per example, the head's tanh output, and logits.
    first: Vec<T>,
    pooled: Vec<T>,
    logits: Vec<T>,
}

/// What the forward pass of one layer keeps for its backward pass.
struct LayerTape<T> {
    input: Vec<T>,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    context: Vec<T>,
    /// Input of the attention layer norm: attention output + the layer input.
    attention_sum: Vec<T>,
    attended: Vec<T>,
    /// The intermediate projection before and after GELU.
    inner_pre: Vec<T>,
    inner: Vec<T>,
    /// Input of the output layer norm.
    output_sum: Vec<T>,
}

struct Pass<'a, T> {
    model: &'a SequenceClassifier,
    batch: &'a Batch,
    params: Params<'a, T>,
}

impl<'a, T: Float> Pass<'a, T> {
    fn new(model: &'a SequenceClassifier, held: &'a Held<'a>, batch: &'a Batch) -> Self {
        Self {
            model,
            batch,
            params: Params::new(held),
        }
    }

    fn layer_forward(&self, index: usize, input: Vec<T>) -> Result<(LayerTape<T>, Vec<T>)> {
        let layer = &self.model.layers[index];
        let q = self.params.linear_forward(&layer.query, &input)?;
        let k = self.params.linear_forward(&layer.key, &input)?;
        let v = self.params.linear_forward(&layer.value, &input)?;
        let context = attention::forward_packed(&q, &k, &v, &self.batch.sequences, layer.num_heads);
        let mut attention_sum = self
            .params
            .linear_forward(&layer.attention_output, &context)?;
        add_into(&mut attention_sum, &input);
        let attended = self
            .params
            .norm_forward(&layer.attention_norm, &attention_sum)?;
        let inner_pre = self.params.linear_forward(&layer.intermediate, &attended)?;
        let inner = fused::gelu_rows(&inner_pre);
        let mut output_sum = self.params.linear_forward(&layer.output, &inner)?;
        add_into(&mut output_sum, &attended);
        let output = self.params.norm_forward(&layer.output_norm, &output_sum)?;
        let tape = LayerTape {
            input,
            q,
            k,
            v,
            context,
            attention_sum,
            attended,
            inner_pre,
            inner,
            output_sum,
        };
        Ok((tape, output))
    }

    /// The backward pass of one layer from the gradient of its output. Stops as soon as
    /// nothing further down is trained; returns the gradient of the layer input if
    /// `need_input` (something below the layer is trained).
    fn layer_backward(
        &mut self,
        index: usize,
        tape: LayerTape<T>,
        d_output: Vec<T>,
        need_input: bool,
    ) -> Result<Option<Vec<T>>> {
        let model = self.model;
        let layer = &model.layers[index];
        let attention_or_below = need_input
            || [
                &layer.query,
                &layer.key,
                &layer.value,
                &layer.attention_output,
            ]
            .iter()
            .any(|l| l.trained());
        let attention_norm_or_below = attention_or_below || layer.attention_norm.trained();
        let intermediate_or_below = attention_norm_or_below || layer.intermediate.trained();

        let mut d_sum =
            self.params
                .norm_backward(&layer.output_norm, &tape.output_sum, &d_output)?;
        let mut d_inner = intermediate_or_below.then(|| vec![T::zero(); tape.inner.len()]);
        self.params.linear_backward(
            &layer.output,
            &tape.inner,
            &d_sum,
            d_inner.as_deref_mut().map(|d| (d, false)),
        )?;
        let Some(d_inner) = d_inner else {
            return Ok(None);
        };
        let d_inner_pre = fused::gelu_grad(&tape.inner_pre, &d_inner);
        drop(d_inner);
        // d(attended) = the residual's d_sum + the intermediate projection's dx, in place.
        self.params.linear_backward(
            &layer.intermediate,
            &tape.attended,
            &d_inner_pre,
            attention_norm_or_below.then_some((&mut d_sum[..], true)),
        )?;
        if !attention_norm_or_below {
            return Ok(None);
        }
        let mut d_attention_sum =
            self.params
                .norm_backward(&layer.attention_norm, &tape.attention_sum, &d_sum)?;
        if !attention_or_below {
            return Ok(None);
        }
        let mut d_context = vec![T::zero(); tape.context.len()];
        self.params.linear_backward(
            &layer.attention_output,
            &tape.context,
            &d_attention_sum,
            Some((&mut d_context, false)),
        )?;
        let (dq, dk, dv) = attention::backward_packed(
            (&tape.q, &tape.k, &tape.v),
            &d_context,
            &self.batch.sequences,
            layer.num_heads,
        );
        // d(input) = the residual's d_attention_sum + dx of q, k and v, in place.
        for (l, d) in [(&layer.query, dq), (&layer.key, dk), (&layer.value, dv)] {
            let dx = need_input.then_some((&mut d_attention_sum[..], true));
            self.params.linear_backward(l, &tape.input, &d, dx)?;
        }
        Ok(need_input.then_some(d_attention_sum))
    }

    /// The forward pass on the packed tokens; with `keep`, what the backward pass needs.
    fn forward(&self, keep: bool) -> Result<Forward<T>> {
        let model = self.model;
        let rows = self.batch.rows();
        let e = &model.embeddings;
        let width = e.word.dim(1)?;

        // Embeddings: (word + token type) + position, then the layer norm.
        let (word, kind, position) = (
            self.params.get(&e.word)?,
            self.params.get(&e.token_type)?,
            self.params.get(&e.position)?,
        );
        let mut embedded = vec![T::zero(); rows * width];
        for (&n, row) in self.batch.kept.iter().zip(embedded.chunks_mut(width)) {
            let (w, t, p) = (
                self.batch.ids[n] as usize,
                self.batch.types[n] as usize,
                self.batch.positions[n] as usize,
            );
            let (w, t, p) = (
                &word[w * width..(w + 1) * width],
                &kind[t * width..(t + 1) * width],
                &position[p * width..(p + 1) * width],
            );
            for i in 0..width {
                row[i] = (w[i] + t[i]) + p[i];
            }
        }
        let mut hidden = self.params.norm_forward(&e.layer_norm, &embedded)?;

        let mut tapes = Vec::with_capacity(model.layers.len());
        for index in 0..model.layers.len() {
            let (tape, output) = self.layer_forward(index, hidden)?;
            if keep {
                tapes.push(tape);
            }
            hidden = output;
        }

        // Head on the first token of each example: tanh(dense(h)) → out_proj.
        let (dense, out_proj) = model.head.linears();
        let first: Vec<T> = self
            .batch
            .sequences
            .iter()
            .flat_map(|&(start, _)| hidden[start * width..(start + 1) * width].iter().copied())
            .collect();
        let pre = self.params.linear_forward(dense, &first)?;
        let pooled: Vec<T> = pre.iter().map(|v| T::f(v.g().tanh())).collect();
        let logits = self.params.linear_forward(out_proj, &pooled)?;
        Ok(Forward {
            embedded,
            tapes,
            first,
            pooled,
            logits,
        })
    }

    /// Loss, and the gradients of every trained tensor.
    fn run(mut self) -> Result<(f64, Gradients<T>)> {
        let model = self.model;
        let (rows, batch) = (self.batch.rows(), self.batch.batch);
        let e = &model.embeddings;
        let width = e.word.dim(1)?;
        let (dense, out_proj) = model.head.linears();
        let Forward {
            embedded,
            mut tapes,
            first,
            pooled,
            logits,
        } = self.forward(true)?;
        let labels = self
            .batch
            .labels
            .as_ref()
            .expect("training batches have labels");
        let (loss, d_logits) = loss_and_logit_gradient(&logits, labels, batch)?;

        // Which parts below the head are trained: the backward pass stops at the lowest.
        let embeddings_trained = [&e.word, &e.position, &e.token_type]
            .iter()
            .any(|t| t.track_op())
            || e.layer_norm.trained();
        let layer_trained: Vec<bool> = model
            .layers
            .iter()
            .map(|l| {
                l.linears().iter().any(|x| x.trained())
                    || l.attention_norm.trained()
                    || l.output_norm.trained()
            })
            .collect();
        // trained_below[i]: something below layer i (layers < i, or the embeddings) is trained.
        let mut trained_below = Vec::with_capacity(layer_trained.len() + 1);
        trained_below.push(embeddings_trained);
        for (i, &t) in layer_trained.iter().enumerate() {
            trained_below.push(trained_below[i] || t);
        }
        let encoder_trained = *trained_below.last().unwrap();

        let mut d_pooled = vec![T::zero(); pooled.len()];
        self.params
            .linear_backward(out_proj, &pooled, &d_logits, Some((&mut d_pooled, false)))?;
        let d_pre: Vec<T> = d_pooled
            .iter()
            .zip(&pooled)
            .map(|(&d, &p)| d * (T::one() - p * p))
            .collect();
        let mut d_first = encoder_trained.then(|| vec![T::zero(); first.len()]);
        self.params.linear_backward(
            dense,
            &first,
            &d_pre,
            d_first.as_deref_mut().map(|d| (d, false)),
        )?;
        let Some(d_first) = d_first else {
            return Ok((loss, self.params.grads));
        };
        let mut d_hidden = vec![T::zero(); rows * width];
        for (b, &(start, _)) in self.batch.sequences.iter().enumerate() {
            d_hidden[start * width..(start + 1) * width]
                .copy_from_slice(&d_first[b * width..(b + 1) * width]);
        }

        for index in (0..model.layers.len()).rev() {
            let tape = tapes.pop().expect("one tape per layer");
            if !trained_below[index + 1] {
                return Ok((loss, self.params.grads));
            }
            match self.layer_backward(index, tape, d_hidden, trained_below[index])? {
                Some(d) => d_hidden = d,
                None => return Ok((loss, self.params.grads)),
            }
        }

        // Embeddings: the layer norm, then each table's rows, scattered.
        let d_embedded = self
            .params
            .norm_backward(&e.layer_norm, &embedded, &d_hidden)?;
        let tables = [
            (&e.word, &self.batch.ids),
            (&e.token_type, &self.batch.types),
            (&e.position, &self.batch.positions),
        ];
        for (table, ids) in tables {
            if !table.track_op() {
                continue;
            }
            let mut d_table = vec![T::zero(); table.elem_count()];
            for (&n, g) in self.batch.kept.iter().zip(d_embedded.chunks(width)) {
                let id = ids[n] as usize;
                let dst = &mut d_table[id * width..(id + 1) * width];
                dst.iter_mut().zip(g).for_each(|(d, &g)| *d += g);
            }
            self.params.record(table, d_table);
        }
        Ok((loss, self.params.grads))
    }
}
