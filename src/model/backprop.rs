//! The training pass of [`SequenceClassifier`], written out: a forward pass that keeps what the
//! backward pass needs, and a backward pass, layer by layer, that forms only the gradients of
//! the tensors being trained (those with `track_op()`).
//!
//! Why not candle's `backward()`: for every input of every node it allocates a zero tensor and
//! adds the incoming gradient into it, and it walks the whole graph even where nothing below is
//! trained. On a SIFT step that bookkeeping cost as much as the backward GEMMs. Here residual
//! gradients accumulate in place (the GEMM that forms dx adds onto them), the backward pass stops
//! at the lowest trained tensor, and the kernels are the same ones the candle ops run
//! (`fused.rs`, `attention.rs`, `ops.rs`). The pass also runs on the batch's real tokens only
//! (see [`Batch`]): padding changes no loss and no gradient, so it is not computed.
//! `tests/train.rs` checks the loss, every gradient and the logits against candle's autograd
//! on the same padded batch, for full, head, SIFT (incl. non-linear targets) and LoRA.

use std::borrow::Cow;
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Storage, StorageRef, Tensor, TensorId, WithDType};
use rayon::prelude::*;

use super::attention;
use super::bert::{mean_loss, Head, LayerNorm, Linear, Mode, SequenceClassifier};
use super::config::Activation;
use super::fused::{self, Float};
use super::ops::{self, gemm_strided};

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
    fn linear(l: &Linear) -> Vec<&Tensor> {
        let mut out = vec![&l.weight, &l.bias];
        if let Some(d) = &l.delta {
            out.push(&d.values);
        }
        if let Some(lora) = &l.lora {
            out.extend([&lora.a, &lora.b]);
        }
        out
    }
    let e = &model.embeddings;
    let mut out = vec![
        &e.word,
        &e.position,
        &e.token_type,
        &e.layer_norm.weight,
        &e.layer_norm.bias,
    ];
    for layer in &model.layers {
        for l in layer.linears() {
            out.extend(linear(l));
        }
        for n in [&layer.attention_norm, &layer.output_norm] {
            out.extend([&n.weight, &n.bias]);
        }
    }
    let (dense, out_proj) = head_linears(&model.head);
    out.extend(linear(dense));
    out.extend(linear(out_proj));
    out
}

/// The head's two linear layers: (pooler, classifier) for BERT, (dense, out_proj) for RoBERTa.
/// Both apply tanh between them.
fn head_linears(head: &Head) -> (&Linear, &Linear) {
    match head {
        Head::Bert { pooler, classifier } => (pooler, classifier),
        Head::Roberta { dense, out_proj } => (dense, out_proj),
    }
}

/// Read access to the model's tensors for the length of one pass (CPU, contiguous).
#[derive(Default)]
struct Held<'a> {
    guards: HashMap<TensorId, (StorageRef<'a>, usize, usize)>,
}

impl<'a> Held<'a> {
    fn hold(&mut self, t: &'a Tensor) -> Result<()> {
        if self.guards.contains_key(&t.id()) {
            return Ok(());
        }
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("training pass: model tensors must be contiguous".into())
        })?;
        self.guards.insert(t.id(), (storage, start, end));
        Ok(())
    }

    fn get<T: WithDType>(&self, t: &Tensor) -> Result<&[T]> {
        let (storage, start, end) = self
            .guards
            .get(&t.id())
            .ok_or_else(|| candle_core::Error::Msg("training pass: tensor not held".into()))?;
        let Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("training pass: CPU tensors only")
        };
        Ok(&cpu.as_slice::<T>()?[*start..*end])
    }
}

enum Labels {
    Classes(Vec<u32>),
    Targets(Vec<f64>),
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

/// A trained tensor and its gradient.
type Gradients<T> = Vec<(Tensor, Vec<T>)>;

fn into_tensors<T: WithDType>(grads: Gradients<T>) -> Result<Vec<(Tensor, Tensor)>> {
    grads
        .into_iter()
        .map(|(t, g)| {
            let g = Tensor::from_vec(g, t.shape(), t.device())?;
            Ok((t, g))
        })
        .collect()
}

/// A `GradStore` holding `grads`. A trained tensor that is a `Var` gets its gradient directly;
/// one computed from `Var`s (a sparse increment on a bias or LayerNorm, rebuilt as W +
/// scatter(values)) passes it on through candle's autograd, by differentiating Σ t ⊙ g.
fn grad_store(grads: Vec<(Tensor, Tensor)>) -> Result<GradStore> {
    let mut surrogate: Option<Tensor> = None;
    let mut leaves = Vec::new();
    for (t, g) in grads {
        if t.is_variable() {
            leaves.push((t, g));
        } else {
            let term = (t * g)?.sum_all()?;
            surrogate = Some(match surrogate {
                Some(s) => (s + term)?,
                None => term,
            });
        }
    }
    // candle has no public constructor for an empty store: a constant's backward gives one.
    let mut store = match surrogate {
        Some(s) => s.backward()?,
        None => Tensor::zeros((), DType::F32, &candle_core::Device::Cpu)?.backward()?,
    };
    for (t, g) in leaves {
        store.insert(&t, g);
    }
    Ok(store)
}

/// `dst (m × n) (+)= a (m × k) · bᵀ`, b (n × k) row-major.
fn matmul_nt<T: WithDType>(dst: &mut [T], keep: bool, a: &[T], b: &[T], (m, n, k): Dims3) {
    debug_assert!(b.len() == n * k);
    matmul_rhs_strided(dst, keep, a, (b, (k as isize, 1)), (m, n, k));
}

/// `dst (m × n) (+)= a (m × k) · b (k × n)`, all row-major.
fn matmul_nn<T: WithDType>(dst: &mut [T], keep: bool, a: &[T], b: &[T], (m, n, k): Dims3) {
    debug_assert!(b.len() == k * n);
    matmul_rhs_strided(dst, keep, a, (b, (1, n as isize)), (m, n, k));
}

/// `dst (m × n) (+)= a (m × k) · B`, dst and a row-major, B read through its (column, row)
/// element strides.
fn matmul_rhs_strided<T: WithDType>(
    dst: &mut [T],
    keep: bool,
    a: &[T],
    (b, b_strides): (&[T], (isize, isize)),
    (m, n, k): Dims3,
) {
    assert!(dst.len() == m * n && a.len() == m * k);
    unsafe {
        gemm_strided(
            (m, n, k),
            dst.as_mut_ptr(),
            (1, n as isize),
            keep,
            a.as_ptr(),
            (1, k as isize),
            b.as_ptr(),
            b_strides,
            true,
        )
    }
}

/// `dst (m × n) = aᵀ · b`, a (k × m) and b (k × n) row-major: a weight gradient δᵀx.
fn matmul_tn<T: WithDType>(a: &[T], b: &[T], (m, n, k): Dims3) -> Vec<T> {
    debug_assert!(a.len() == k * m && b.len() == k * n);
    let mut dst = vec![T::zero(); m * n];
    let (mi, ni) = (m as isize, n as isize);
    unsafe {
        gemm_strided(
            (m, n, k),
            dst.as_mut_ptr(),
            (1, ni),
            false,
            a.as_ptr(),
            (mi, 1),
            b.as_ptr(),
            (1, ni),
            true,
        )
    };
    dst
}

type Dims3 = (usize, usize, usize);

/// `dst += src`, element-wise.
fn add_into<T: WithDType>(dst: &mut [T], src: &[T]) {
    dst.par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d += s));
}

/// What a linear layer's tensors hold, as slices, with its effective weight.
struct LinearSlices<'a, T: Clone> {
    /// W + Δ (SIFT, random) or W + (α/r)·B·A (LoRA), formed once per pass: an out × in copy
    /// costs nothing next to the GEMMs, and the forward pass and dx are then plain GEMMs.
    /// Borrowed W when there is no increment.
    weight: Cow<'a, [T]>,
    bias: &'a [T],
    in_dim: usize,
    out_dim: usize,
    /// Sparse Δ: rows, columns.
    delta: Option<(&'a [u32], &'a [u32])>,
    /// LoRA: A (r × in), B (out × r), r, α/r.
    lora: Option<(&'a [T], &'a [T], usize, T)>,
}

fn linear_trained(l: &Linear) -> bool {
    l.weight.track_op()
        || l.bias.track_op()
        || l.delta.as_ref().is_some_and(|d| d.values.track_op())
        || l.lora
            .as_ref()
            .is_some_and(|f| f.a.track_op() || f.b.track_op())
}

fn norm_trained(n: &LayerNorm) -> bool {
    n.weight.track_op() || n.bias.track_op()
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
    held: &'a Held<'a>,
    batch: &'a Batch,
    grads: Gradients<T>,
}

impl<'a, T: Float> Pass<'a, T> {
    fn new(model: &'a SequenceClassifier, held: &'a Held<'a>, batch: &'a Batch) -> Self {
        Self {
            model,
            held,
            batch,
            grads: Vec::new(),
        }
    }

    fn get(&self, t: &Tensor) -> Result<&'a [T]> {
        self.held.get(t)
    }

    /// Records `g` as (part of) the gradient of `t`, if `t` is trained.
    fn record(&mut self, t: &Tensor, g: Vec<T>) {
        if !t.track_op() {
            return;
        }
        match self.grads.iter_mut().find(|(seen, _)| seen.id() == t.id()) {
            Some((_, sum)) => add_into(sum, &g),
            None => self.grads.push((t.clone(), g)),
        }
    }

    fn linear(&self, l: &'a Linear) -> Result<LinearSlices<'a, T>> {
        let (out_dim, in_dim) = l.weight.dims2()?;
        let base = self.get(&l.weight)?;
        let mut weight = Cow::Borrowed(base);
        let mut delta = None;
        if let Some(d) = &l.delta {
            let w = weight.to_mut();
            for ((&r, &c), &v) in d.rows.iter().zip(&d.cols).zip(self.get(&d.values)?) {
                w[r as usize * in_dim + c as usize] += v;
            }
            delta = Some((&d.rows[..], &d.cols[..]));
        }
        let mut lora = None;
        if let Some(f) = &l.lora {
            let (a, b, rank, scale) =
                (self.get(&f.a)?, self.get(&f.b)?, f.a.dim(0)?, T::f(f.scale));
            let mut ba = vec![T::zero(); out_dim * in_dim];
            matmul_nn(&mut ba, false, b, a, (out_dim, in_dim, rank));
            weight
                .to_mut()
                .iter_mut()
                .zip(&ba)
                .for_each(|(w, &d)| *w += scale * d);
            lora = Some((a, b, rank, scale));
        }
        Ok(LinearSlices {
            weight,
            bias: self.get(&l.bias)?,
            in_dim,
            out_dim,
            delta,
            lora,
        })
    }

    /// y = x·W_effᵀ + b.
    fn linear_forward(&self, l: &'a Linear, x: &[T]) -> Result<Vec<T>> {
        let s = self.linear(l)?;
        Ok(ops::dense_forward(x, &s.weight, s.bias))
    }

    /// From the output gradient `dy`: the gradients of the layer's trained tensors, and dx
    /// into `dx` (overwritten, or added to with `accumulate`) if given.
    fn linear_backward(
        &mut self,
        l: &'a Linear,
        x: &[T],
        dy: &[T],
        dx: Option<(&mut [T], bool)>,
    ) -> Result<()> {
        let s = self.linear(l)?;
        let rows = x.len() / s.in_dim;
        let (in_dim, out_dim) = (s.in_dim, s.out_dim);
        if let Some((dx, accumulate)) = dx {
            matmul_nn(dx, accumulate, dy, &s.weight, (rows, in_dim, out_dim));
        }
        if l.weight.track_op() {
            let dw = matmul_tn(dy, x, (out_dim, in_dim, rows));
            self.record(&l.weight, dw);
        }
        if l.bias.track_op() {
            self.record(&l.bias, ops::column_sums_of(dy, out_dim));
        }
        if let (Some(d), Some(entries)) = (&l.delta, s.delta) {
            if d.values.track_op() {
                let dv = ops::sampled_products(x, dy, entries, (in_dim, out_dim));
                self.record(&d.values, dv);
            }
        }
        // LoRA, W_eff = W + s·B·A: dB = s·δᵀ·(x·Aᵀ), dA = s·(δ·B)ᵀ·x.
        if let (Some(f), Some((a, b, rank, scale))) = (&l.lora, s.lora) {
            if f.b.track_op() {
                let mut hidden = vec![T::zero(); rows * rank];
                matmul_nt(&mut hidden, false, x, a, (rows, rank, in_dim));
                hidden.iter_mut().for_each(|v| *v *= scale);
                self.record(&f.b, matmul_tn(dy, &hidden, (out_dim, rank, rows)));
            }
            if f.a.track_op() {
                let mut g = vec![T::zero(); rows * rank];
                matmul_nn(&mut g, false, dy, b, (rows, rank, out_dim));
                g.iter_mut().for_each(|v| *v *= scale);
                self.record(&f.a, matmul_tn(&g, x, (rank, in_dim, rows)));
            }
        }
        Ok(())
    }

    fn norm_forward(&self, n: &LayerNorm, x: &[T]) -> Result<Vec<T>> {
        let kernel = fused::LayerNorm { eps: n.eps };
        Ok(kernel.forward(x, self.get(&n.weight)?, self.get(&n.bias)?))
    }

    /// dx of a layer norm at input `x`; dγ and dβ recorded if trained.
    fn norm_backward(&mut self, n: &LayerNorm, x: &[T], dy: &[T]) -> Result<Vec<T>> {
        let kernel = fused::LayerNorm { eps: n.eps };
        let (dx, params) = kernel.backward(x, self.get(&n.weight)?, dy, norm_trained(n));
        if let Some((dgamma, dbeta)) = params {
            self.record(&n.weight, dgamma);
            self.record(&n.bias, dbeta);
        }
        Ok(dx)
    }

    fn layer_forward(&self, index: usize, input: Vec<T>) -> Result<(LayerTape<T>, Vec<T>)> {
        let layer = &self.model.layers[index];
        let q = self.linear_forward(&layer.query, &input)?;
        let k = self.linear_forward(&layer.key, &input)?;
        let v = self.linear_forward(&layer.value, &input)?;
        let context = attention::forward_packed(&q, &k, &v, &self.batch.sequences, layer.num_heads);
        let mut attention_sum = self.linear_forward(&layer.attention_output, &context)?;
        add_into(&mut attention_sum, &input);
        let attended = self.norm_forward(&layer.attention_norm, &attention_sum)?;
        let inner_pre = self.linear_forward(&layer.intermediate, &attended)?;
        let inner = fused::gelu_rows(&inner_pre);
        let mut output_sum = self.linear_forward(&layer.output, &inner)?;
        add_into(&mut output_sum, &attended);
        let output = self.norm_forward(&layer.output_norm, &output_sum)?;
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
            .any(|l| linear_trained(l));
        let attention_norm_or_below = attention_or_below || norm_trained(&layer.attention_norm);
        let intermediate_or_below = attention_norm_or_below || linear_trained(&layer.intermediate);

        let mut d_sum = self.norm_backward(&layer.output_norm, &tape.output_sum, &d_output)?;
        let mut d_inner = intermediate_or_below.then(|| vec![T::zero(); tape.inner.len()]);
        self.linear_backward(
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
        self.linear_backward(
            &layer.intermediate,
            &tape.attended,
            &d_inner_pre,
            attention_norm_or_below.then_some((&mut d_sum[..], true)),
        )?;
        if !attention_norm_or_below {
            return Ok(None);
        }
        let mut d_attention_sum =
            self.norm_backward(&layer.attention_norm, &tape.attention_sum, &d_sum)?;
        if !attention_or_below {
            return Ok(None);
        }
        let mut d_context = vec![T::zero(); tape.context.len()];
        self.linear_backward(
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
            self.linear_backward(l, &tape.input, &d, dx)?;
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
            self.get(&e.word)?,
            self.get(&e.token_type)?,
            self.get(&e.position)?,
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
        let mut hidden = self.norm_forward(&e.layer_norm, &embedded)?;

        let mut tapes = Vec::with_capacity(model.layers.len());
        for index in 0..model.layers.len() {
            let (tape, output) = self.layer_forward(index, hidden)?;
            if keep {
                tapes.push(tape);
            }
            hidden = output;
        }

        // Head on the first token of each example: tanh(dense(h)) → out_proj.
        let (dense, out_proj) = head_linears(&model.head);
        let first: Vec<T> = self
            .batch
            .sequences
            .iter()
            .flat_map(|&(start, _)| hidden[start * width..(start + 1) * width].iter().copied())
            .collect();
        let pre = self.linear_forward(dense, &first)?;
        let pooled: Vec<T> = pre.iter().map(|v| T::f(v.g().tanh())).collect();
        let logits = self.linear_forward(out_proj, &pooled)?;
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
        let (dense, out_proj) = head_linears(&model.head);
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
            || norm_trained(&e.layer_norm);
        let layer_trained: Vec<bool> = model
            .layers
            .iter()
            .map(|l| {
                l.linears().iter().any(|x| linear_trained(x))
                    || norm_trained(&l.attention_norm)
                    || norm_trained(&l.output_norm)
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
        self.linear_backward(out_proj, &pooled, &d_logits, Some((&mut d_pooled, false)))?;
        let d_pre: Vec<T> = d_pooled
            .iter()
            .zip(&pooled)
            .map(|(&d, &p)| d * (T::one() - p * p))
            .collect();
        let mut d_first = encoder_trained.then(|| vec![T::zero(); first.len()]);
        self.linear_backward(
            dense,
            &first,
            &d_pre,
            d_first.as_deref_mut().map(|d| (d, false)),
        )?;
        let Some(d_first) = d_first else {
            return Ok((loss, self.grads));
        };
        let mut d_hidden = vec![T::zero(); rows * width];
        for (b, &(start, _)) in self.batch.sequences.iter().enumerate() {
            d_hidden[start * width..(start + 1) * width]
                .copy_from_slice(&d_first[b * width..(b + 1) * width]);
        }

        for index in (0..model.layers.len()).rev() {
            let tape = tapes.pop().expect("one tape per layer");
            if !trained_below[index + 1] {
                return Ok((loss, self.grads));
            }
            match self.layer_backward(index, tape, d_hidden, trained_below[index])? {
                Some(d) => d_hidden = d,
                None => return Ok((loss, self.grads)),
            }
        }

        // Embeddings: the layer norm, then each table's rows, scattered.
        let d_embedded = self.norm_backward(&e.layer_norm, &embedded, &d_hidden)?;
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
            self.record(table, d_table);
        }
        Ok((loss, self.grads))
    }
}

/// Mean loss over the batch and its gradient with respect to the logits (B × L): softmax
/// cross-entropy for class labels, squared error for regression targets.
fn loss_and_logit_gradient<T: Float>(
    logits: &[T],
    labels: &Labels,
    batch: usize,
) -> Result<(f64, Vec<T>)> {
    let classes = logits.len() / batch;
    let mut d_logits = vec![T::zero(); logits.len()];
    let mut total = 0.0;
    for b in 0..batch {
        let row = &logits[b * classes..(b + 1) * classes];
        let d_row = &mut d_logits[b * classes..(b + 1) * classes];
        match labels {
            Labels::Classes(y) => {
                let y = y[b] as usize;
                if y >= classes {
                    candle_core::bail!("label {y} out of range for {classes} classes");
                }
                let max = row.iter().map(|v| v.g()).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| (v.g() - max).exp()).sum();
                let log_sum = max + sum.ln();
                total += log_sum - row[y].g();
                for (c, d) in d_row.iter_mut().enumerate() {
                    let p = (row[c].g() - log_sum).exp();
                    let target = if c == y { 1.0 } else { 0.0 };
                    *d = T::f((p - target) / batch as f64);
                }
            }
            Labels::Targets(y) => {
                let diff = row[0].g() - y[b];
                total += diff * diff;
                d_row[0] = T::f(2.0 * diff / batch as f64);
            }
        }
    }
    Ok((total / batch as f64, d_logits))
}
