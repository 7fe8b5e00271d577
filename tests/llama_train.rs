//! The decoder's training pass (`backprop::llama`) against candle's autograd on
//! `Llama::forward(.., Mode::Training)`, in f64, on a tiny random LLaMA built here (grouped-query
//! attention, tied and untied heads): the loss on response tokens and every trained gradient,
//! for full fine-tuning, SIFT (sparse Δ on every projection kind) and LoRA.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor, Var, D};
use sift_lab::backprop::llama::{loss, loss_and_gradients, LmBatch};
use sift_lab::model::config::LlamaConfig;
use sift_lab::model::llama::Llama;
use sift_lab::model::{Increment, Increments, Mode, WeightMap};

fn config(tied: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 37,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 32,
        tie_word_embeddings: tied,
        bos_token_id: None,
        eos_token_id: Some(2),
    }
}

/// Seeded weights (norm weights around 1), as Vars when `trained`.
fn weights(config: &LlamaConfig, trained: bool) -> (WeightMap, Vec<(String, Var)>) {
    let mut map = WeightMap::new();
    let mut vars = Vec::new();
    for (i, (name, shape)) in config.tensor_shapes().into_iter().enumerate() {
        let noise = common::seeded_normal(&shape.clone().into(), 0.3, 100 + i as u64);
        let t = if name.ends_with("norm.weight") || name.ends_with("layernorm.weight") {
            (noise + 1.0).unwrap()
        } else {
            noise
        };
        if trained {
            let var = Var::from_tensor(&t).unwrap();
            map.insert(name.clone(), var.as_tensor().clone());
            vars.push((name, var));
        } else {
            map.insert(name, t);
        }
    }
    (map, vars)
}

fn batch() -> LmBatch {
    LmBatch {
        rows: vec![
            vec![1, 5, 9, 13, 17, 21, 25, 29, 33],
            vec![3, 4, 5, 6, 7],
            vec![36, 0, 11],
        ],
        targets_from: vec![4, 1, 2],
    }
}

/// The same loss from the candle graph: right-padded rows, log-softmax, the target tokens.
fn autograd_loss(model: &Llama, batch: &LmBatch) -> Tensor {
    let longest = batch.rows.iter().map(Vec::len).max().unwrap();
    let padded: Vec<Vec<u32>> = batch
        .rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.resize(longest, 2);
            r
        })
        .collect();
    let ids = Tensor::new(padded, &Device::Cpu).unwrap();
    let logits = model.forward(&ids, Mode::Training).unwrap();
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let mut terms = Vec::new();
    for (r, row) in batch.rows.iter().enumerate() {
        for t in batch.targets_from[r]..row.len() {
            terms.push(log_probs.i((r, t - 1, row[t] as usize)).unwrap());
        }
    }
    let n = terms.len() as f64;
    (Tensor::stack(&terms, 0).unwrap().sum_all().unwrap() * (-1.0 / n)).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Loss and every gradient of `trained` equal candle autograd's to 1e-10 (relative to scale).
fn check(model: &Llama, trained: &[(String, Var)]) {
    let batch = batch();
    let (ours, grads) = loss_and_gradients(model, &batch).unwrap();
    let reference = autograd_loss(model, &batch);
    let want = reference.to_scalar::<f64>().unwrap();
    assert!((ours - want).abs() < 1e-10, "loss {ours} vs {want}");
    assert!((loss(model, &batch).unwrap() - want).abs() < 1e-10);
    let reference_grads = reference.backward().unwrap();
    assert!(!trained.is_empty());
    for (name, var) in trained {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let r = reference_grads.get(var.as_tensor()).unwrap();
        let scale = r
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(scale > 0.0, "{name}: zero reference gradient");
        let diff = max_abs(g, r);
        assert!(
            diff < 1e-9 * scale.max(1.0),
            "{name}: max |diff| {diff} (scale {scale})"
        );
    }
}

#[test]
fn full_fine_tuning_matches_autograd_untied_and_tied() {
    for tied in [false, true] {
        let config = config(tied);
        let (map, vars) = weights(&config, true);
        let model = Llama::new(&config, &map, &Increments::new()).unwrap();
        check(&model, &vars);
    }
}

/// A batch's loss does not depend on how the rows are packed: each row alone, weighted by its
/// targets, gives the batch's mean (rows never see each other).
#[test]
fn rows_are_independent() {
    let config = config(false);
    let (map, _) = weights(&config, false);
    let model = Llama::new(&config, &map, &Increments::new()).unwrap();
    let b = batch();
    let whole = loss(&model, &b).unwrap();
    let mut sum = 0.0;
    for r in 0..b.rows.len() {
        let one = LmBatch {
            rows: vec![b.rows[r].clone()],
            targets_from: vec![b.targets_from[r]],
        };
        sum += loss(&model, &one).unwrap() * one.targets() as f64;
    }
    assert!((whole - sum / b.targets() as f64).abs() < 1e-12);
}

const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

#[test]
fn sift_sparse_increments_match_autograd() {
    let config = config(false);
    let (map, _) = weights(&config, false);
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        config.tensor_shapes().into_iter().collect();
    let mut increments = Increments::new();
    let mut trained = Vec::new();
    for layer in 0..config.num_hidden_layers {
        for (p, proj) in PROJECTIONS.iter().enumerate() {
            let name = format!("model.layers.{layer}.{proj}.weight");
            let (out_dim, in_dim) = (shapes[&name][0], shapes[&name][1]);
            // Seven entries spread over the matrix, distinct.
            let flat: Vec<u32> = (0..7u32)
                .map(|i| (i * 37 + p as u32 * 5 + layer as u32) % (out_dim * in_dim) as u32)
                .collect();
            let rows: Arc<[u32]> = flat.iter().map(|f| f / in_dim as u32).collect();
            let cols: Arc<[u32]> = flat.iter().map(|f| f % in_dim as u32).collect();
            let values = Var::from_tensor(&common::seeded_normal(
                &7.into(),
                0.1,
                900 + (layer * 10 + p) as u64,
            ))
            .unwrap();
            increments.insert(
                name.clone(),
                Increment::Sparse {
                    rows,
                    cols,
                    values: values.as_tensor().clone(),
                },
            );
            trained.push((format!("{name} Δ"), values));
        }
    }
    let model = Llama::new(&config, &map, &increments).unwrap();
    check(&model, &trained);
}

#[test]
fn lora_matches_autograd() {
    let config = config(true);
    let (map, _) = weights(&config, false);
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        config.tensor_shapes().into_iter().collect();
    let mut increments = Increments::new();
    let mut trained = Vec::new();
    let rank = 3;
    for layer in 0..config.num_hidden_layers {
        for (p, proj) in PROJECTIONS.iter().enumerate() {
            let name = format!("model.layers.{layer}.{proj}.weight");
            let (out_dim, in_dim) = (shapes[&name][0], shapes[&name][1]);
            let seed = 500 + (layer * 10 + p) as u64 * 2;
            // B non-zero so that dA is too (LoRA starts at B = 0; any B tests the pass).
            let a = Var::from_tensor(&common::seeded_normal(&(rank, in_dim).into(), 0.2, seed))
                .unwrap();
            let b = Var::from_tensor(&common::seeded_normal(
                &(out_dim, rank).into(),
                0.2,
                seed + 1,
            ))
            .unwrap();
            increments.insert(
                name.clone(),
                Increment::LowRank {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    scale: 16.0 / rank as f64,
                },
            );
            trained.push((format!("{name} A"), a));
            trained.push((format!("{name} B"), b));
        }
    }
    let model = Llama::new(&config, &map, &increments).unwrap();
    check(&model, &trained);
}

/// Only the top layer trained: the pass stops there and still gets its gradients right.
#[test]
fn top_layer_only_matches_autograd() {
    let config = config(false);
    let (mut map, _) = weights(&config, false);
    let mut trained = Vec::new();
    for name in [
        "model.layers.1.self_attn.v_proj.weight",
        "model.layers.1.input_layernorm.weight",
        "model.norm.weight",
    ] {
        let var = Var::from_tensor(&map[name]).unwrap();
        map.insert(name.to_string(), var.as_tensor().clone());
        trained.push((name.to_string(), var));
    }
    let model = Llama::new(&config, &map, &Increments::new()).unwrap();
    assert_eq!(model.embed.dtype(), DType::F64);
    check(&model, &trained);
}
