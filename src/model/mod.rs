//! Models: configuration, the weight map, θ0, a method's increments, and the architectures.
//!
//! - `config.rs`: `config.json`; `weights.rs`: the weight map (names, shapes, loading, export);
//!   `init.rs`: θ0; `increment.rs`: what a fine-tuning method adds to linear weights;
//! - `layers.rs`: the building blocks the architectures share (linear layer, layer norm);
//! - one file per architecture: `bert.rs` (BERT, MiniLM, RoBERTa encoders with their
//!   classification head), `llama.rs` (LLaMA-architecture decoders: logits of every position,
//!   KV-cache decoding);
//! - `gguf.rs`: GGUF files as a LLaMA weight map (names, q/k rows, tokenizer); `decoder.rs`:
//!   a decoder from a GGUF file, a transformers directory or the hub cache.
//!
//! An architecture's hand-written training pass lives beside the others in `crate::backprop`
//! (`backprop/bert.rs` for `model/bert.rs`), its CPU kernels in `crate::kernels`.

pub mod bert;
pub mod config;
pub mod decoder;
pub mod gguf;
pub mod increment;
pub mod init;
pub mod layers;
pub mod llama;
pub mod weights;

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;
use candle_nn::VarBuilder;

pub use bert::{mean_loss, per_example_loss, SequenceClassifier};
pub use config::{EncoderConfig, Family};
pub use increment::{ClassifierWeights, EffectiveWeights, Increment, Increments};
pub use layers::{Linear, Mode};
pub use weights::WeightMap;

use crate::hub::{self, ModelFiles};

/// A pretrained model ready for a task: θ1 as a weight map, plus what is needed to rebuild it.
pub struct Pretrained {
    pub files: ModelFiles,
    pub config: EncoderConfig,
    pub num_labels: usize,
    /// θ1: the checkpoint's tensors, plus the seeded task head where the checkpoint has none.
    pub weights: WeightMap,
    /// Tensors drawn from the seed rather than read from the checkpoint (the task head, and
    /// for BERT the pooler when missing). θ0 shares them with θ1.
    pub seeded_head: BTreeSet<String>,
    pub tokenizer: tokenizers::Tokenizer,
}

/// Loads `model` (Hub id or directory) for a task with `num_labels` outputs. With `checkpoint`,
/// the weights (and config) come from that fine-tuned directory instead, and its head must fit
/// the task; the tokenizer comes from the checkpoint when it has one, else from `model`.
pub fn load_pretrained(
    model: &str,
    checkpoint: Option<&Path>,
    num_labels: usize,
    head_seed: u64,
    device: &Device,
) -> Result<Pretrained> {
    let base = hub::resolve(model)?;
    let files = match checkpoint {
        Some(dir) => hub::resolve(&dir.to_string_lossy())
            .with_context(|| format!("--checkpoint {}", dir.display()))?,
        None => base.clone(),
    };
    let config = EncoderConfig::load(&files.config)?;
    let mut weights = weights::load_safetensors(&files.weights, device)?;
    let mut seeded_head = BTreeSet::new();
    for (name, shape) in weights::head_shapes(config.family()?, config.hidden_size, num_labels) {
        if !weights.contains_key(&name) {
            let tensor = init::draw(
                &name,
                &shape,
                init::init_for(&name, &config),
                head_seed,
                device,
            )?;
            weights.insert(name.clone(), tensor);
            seeded_head.insert(name);
        }
    }
    let source = files.weights[0].display().to_string();
    weights::check_complete(&weights, &config, num_labels, &source)?;
    let tokenizer_path = files
        .tokenizer
        .clone()
        .or_else(|| base.tokenizer.clone())
        .with_context(|| {
            format!(
                "{}: no tokenizer.json (sift-lab needs the fast-tokenizer file)",
                base.dir().display()
            )
        })?;
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer_path.display()))?;
    Ok(Pretrained {
        files,
        config,
        num_labels,
        weights,
        seeded_head,
        tokenizer,
    })
}

impl Pretrained {
    /// θ0: the architecture's seeded initialisation, sharing θ1's seeded head tensors.
    pub fn theta0(&self, seed: u64) -> Result<WeightMap> {
        let device = self.device();
        let mut theta0 = WeightMap::new();
        for (name, shape) in weights::expected_shapes(&self.config, self.num_labels)? {
            let tensor = if self.seeded_head.contains(&name) {
                self.weights[&name].clone()
            } else {
                init::draw(
                    &name,
                    &shape,
                    init::init_for(&name, &self.config),
                    seed,
                    &device,
                )?
            };
            theta0.insert(name, tensor);
        }
        Ok(theta0)
    }

    /// The longest input the model's position table holds (RoBERTa's positions start after the
    /// padding index, which costs it two rows).
    pub fn max_positions(&self) -> usize {
        match self.config.family() {
            Ok(Family::Roberta) => self.config.max_position_embeddings.saturating_sub(2),
            _ => self.config.max_position_embeddings,
        }
    }

    /// Refuses a `--max-len` the model cannot take, before any work: beyond its position table a
    /// long row would fail deep inside a forward pass (in `train`, after a whole epoch).
    pub fn check_max_len(&self, max_len: usize) -> Result<()> {
        crate::data::check_max_len_flag(max_len)?;
        let limit = self.max_positions();
        anyhow::ensure!(
            max_len <= limit,
            "--max-len {max_len}: the model takes at most {limit} tokens (max_position_embeddings in {}); pass --max-len {limit} or less",
            self.files.config.display()
        );
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.weights
            .values()
            .next()
            .map(|t| t.device().clone())
            .unwrap_or(Device::Cpu)
    }

    /// Builds the classifier over `weights`: a weight map (θ1, θ0, merged weights) or a
    /// method's [`EffectiveWeights`] (weights and increments).
    pub fn build(&self, weights: &impl ClassifierWeights) -> Result<SequenceClassifier> {
        build_classifier(
            &self.config,
            self.num_labels,
            weights.weights(),
            weights.increments(),
        )
    }
}

/// Builds a classifier over a weight map, its linear layers adding the increments keyed by
/// their weights' names. The tensors are used as they are (no copy), so `Var`s or tensors
/// derived from them keep the autograd graph.
pub fn build_classifier(
    config: &EncoderConfig,
    num_labels: usize,
    weights: &WeightMap,
    increments: &Increments,
) -> Result<SequenceClassifier> {
    // The float type and device of the embeddings, which every architecture has.
    let reference = weights
        .get("embeddings.word_embeddings.weight")
        .context("the weights have no embeddings.word_embeddings.weight")?;
    let (dtype, device) = (reference.dtype(), reference.device().clone());
    let vb = VarBuilder::from_tensors(weights.clone(), dtype, &device);
    let classifier = SequenceClassifier::new(vb, increments, config, num_labels)?;
    let applied = classifier
        .linears()
        .iter()
        .filter(|l| l.increment.is_some())
        .count();
    if applied != increments.len() {
        anyhow::bail!(
            "{} increments, but only {applied} are on linear weights of the model",
            increments.len()
        );
    }
    Ok(classifier)
}
