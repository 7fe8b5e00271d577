//! The model core on the real default model and real GLUE data: gradients against finite
//! differences, inference vs training kernels, θ0 statistics, and parity with transformers.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use sift_lab::data::{BatchOrder, Split, Task};
use sift_lab::eval;
use sift_lab::model::{self, Mode, WeightMap};

fn as_vars(weights: &WeightMap, dtype: DType) -> (HashMap<String, Var>, WeightMap) {
    let vars: HashMap<String, Var> = weights
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap(),
            )
        })
        .collect();
    let map = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    (vars, map)
}

#[test]
fn every_tensor_receives_a_gradient_on_the_training_path() {
    let pretrained = common::pretrained(2);
    let batch = common::rte_batch(&pretrained, 4, 64);
    let (vars, weights) = as_vars(&pretrained.weights, DType::F32);
    let grads = common::loss_of(&pretrained, &weights, &batch, Mode::Training)
        .backward()
        .unwrap();
    let mut missing = vec![];
    for (name, var) in &vars {
        let norm = grads
            .get(var.as_tensor())
            .map(|g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0);
        if !(norm > 0.0 && norm.is_finite()) {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "no (or non-finite) gradient for {missing:?}"
    );
    assert_eq!(
        vars.len(),
        6 * 16 + 5 + 4,
        "encoder + embeddings + head tensor count"
    );
}

#[test]
fn inference_kernels_give_no_gradient_which_is_why_training_mode_exists() {
    // Documents the candle behaviour the training path works around: the fused layer norm
    // records no backward, so the embeddings get no gradient through it.
    let pretrained = common::pretrained(2);
    let batch = common::rte_batch(&pretrained, 2, 32);
    let (vars, weights) = as_vars(&pretrained.weights, DType::F32);
    let grads = common::loss_of(&pretrained, &weights, &batch, Mode::Inference)
        .backward()
        .unwrap();
    let word = vars["embeddings.word_embeddings.weight"].as_tensor();
    assert!(
        grads.get(word).is_none(),
        "fused kernels now record a backward: Mode::Inference could be used for training"
    );
}

/// Central finite differences in f64 on sampled entries of four kinds of tensor.
#[test]
fn analytic_gradients_match_central_finite_differences() {
    let pretrained = common::pretrained(2);
    let batch = common::rte_batch(&pretrained, 2, 24);
    let f64_weights: WeightMap = pretrained
        .weights
        .iter()
        .map(|(n, t)| (n.clone(), t.to_dtype(DType::F64).unwrap()))
        .collect();
    let (vars, weights) = as_vars(&f64_weights, DType::F64);
    let grads = common::loss_of(&pretrained, &weights, &batch, Mode::Training)
        .backward()
        .unwrap();

    // An embedding row that the batch uses: the word piece at position 1 of the first example.
    let token = batch
        .input_ids
        .get(0)
        .unwrap()
        .get(1)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap() as usize;
    let hidden = pretrained.config.hidden_size;
    let samples: Vec<(&str, usize)> = vec![
        (
            "encoder.layer.2.attention.self.query.weight",
            5 * hidden + 17,
        ),
        (
            "encoder.layer.2.attention.self.query.weight",
            200 * hidden + 3,
        ),
        (
            "encoder.layer.4.attention.self.value.weight",
            31 * hidden + 300,
        ),
        ("encoder.layer.1.output.LayerNorm.weight", 42),
        ("embeddings.LayerNorm.bias", 7),
        ("embeddings.word_embeddings.weight", token * hidden + 11),
        ("classifier.weight", hidden + 100),
        ("pooler.dense.weight", 9 * hidden + 9),
    ];
    let eps = 1e-5;
    for (name, flat) in samples {
        let analytic = grads
            .get(vars[name].as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .get(flat)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let at = |delta: f64| -> f64 {
            let original = &f64_weights[name];
            let mut values = original.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            values[flat] += delta;
            let mut moved = f64_weights.clone();
            moved.insert(
                name.to_string(),
                Tensor::from_vec(values, original.shape(), &Device::Cpu).unwrap(),
            );
            common::loss_of(&pretrained, &moved, &batch, Mode::Training)
                .to_scalar::<f64>()
                .unwrap()
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        let scale = analytic.abs().max(numeric.abs()).max(1e-6);
        assert!(
            (analytic - numeric).abs() / scale < 1e-4,
            "{name}[{flat}]: analytic {analytic:e} vs finite difference {numeric:e}"
        );
        assert!(
            analytic.abs() > 1e-9,
            "{name}[{flat}]: gradient is zero, the check would be vacuous"
        );
    }
}

#[test]
fn inference_and_training_forwards_agree() {
    let pretrained = common::pretrained(2);
    let data = common::dataset(&pretrained, Task::Mrpc, Split::Dev, 128, 16);
    let batch = data
        .batches(16, BatchOrder::Sequential, &Device::Cpu)
        .next()
        .unwrap()
        .unwrap();
    let classifier = pretrained.build(&pretrained.weights).unwrap();
    let fused = classifier
        .forward(
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
            Mode::Inference,
        )
        .unwrap();
    let plain = classifier
        .forward(
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.attention_mask,
            Mode::Training,
        )
        .unwrap();
    let diff = common::max_abs_diff(&fused, &plain);
    assert!(diff < 1e-4, "max |logit difference| {diff}");
}

fn stats(t: &Tensor) -> (f64, f64) {
    let v = t
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn theta0_follows_the_initialiser_and_shares_the_head() {
    let pretrained = common::pretrained(2);
    let theta0 = pretrained.theta0(7).unwrap();
    let std = pretrained.config.initializer_range;
    // 30522 × 384 draws: the sample std of N(0, 0.02²) is within ~1e-5 of 0.02 (se = σ/√(2n)).
    let word = &theta0["embeddings.word_embeddings.weight"];
    let (mean, sd) = stats(word);
    assert!(mean.abs() < 1e-4, "mean {mean}");
    assert!((sd - std).abs() < 1e-4, "std {sd} vs {std}");
    // transformers zeroes the padding row of the word embeddings.
    let pad_row = word.get(pretrained.config.pad_id() as usize).unwrap();
    assert_eq!(
        pad_row
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    let (_, q_sd) = stats(&theta0["encoder.layer.0.attention.self.query.weight"]);
    assert!((q_sd - std).abs() < 5e-4, "query std {q_sd}");
    for (name, expect) in [
        ("encoder.layer.3.output.LayerNorm.weight", 1.0),
        ("encoder.layer.3.output.LayerNorm.bias", 0.0),
        ("encoder.layer.3.intermediate.dense.bias", 0.0),
    ] {
        let v = theta0[name].to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|&x| x == expect), "{name} is not all {expect}");
    }
    // The checkpoint has a pooler but no classifier: only the classifier is seeded and shared.
    assert_eq!(
        pretrained.seeded_head.iter().cloned().collect::<Vec<_>>(),
        vec![
            "classifier.bias".to_string(),
            "classifier.weight".to_string()
        ]
    );
    for name in &pretrained.seeded_head {
        let same = theta0[name]
            .eq(&pretrained.weights[name])
            .unwrap()
            .min_all()
            .unwrap()
            .to_scalar::<u8>()
            .unwrap();
        assert_eq!(same, 1, "{name} differs between θ0 and θ1");
    }
    // Reproducible from the seed, different across seeds.
    let again = pretrained.theta0(7).unwrap();
    let other = pretrained.theta0(8).unwrap();
    let q = "encoder.layer.5.attention.self.key.weight";
    let d_same = common::max_abs_diff(&theta0[q], &again[q]);
    let d_other = common::max_abs_diff(&theta0[q], &other[q]);
    assert_eq!(d_same, 0.0);
    assert!(d_other > 0.01);
}

/// Reference numbers from transformers: tests/fixtures/make_parity.py (see its docstring).
#[test]
fn logits_and_loss_match_transformers_on_rte_dev() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/parity_rte_dev.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let n = fixture["n_examples"].as_u64().unwrap() as usize;
    let max_len = fixture["max_len"].as_u64().unwrap() as usize;
    let batch_size = fixture["batch_size"].as_u64().unwrap() as usize;

    // Build a BertForSequenceClassification checkpoint: the pretrained encoder + the fixture's head,
    // written with transformers' names, and load it back through --checkpoint's code path.
    let pretrained = common::pretrained(2);
    let mut weights = pretrained.weights.clone();
    let head_w: Vec<Vec<f32>> =
        serde_json::from_value(fixture["head"]["classifier.weight"].clone()).unwrap();
    let head_b: Vec<f32> =
        serde_json::from_value(fixture["head"]["classifier.bias"].clone()).unwrap();
    weights.insert(
        "classifier.weight".into(),
        Tensor::new(head_w, &Device::Cpu).unwrap(),
    );
    weights.insert(
        "classifier.bias".into(),
        Tensor::new(head_b, &Device::Cpu).unwrap(),
    );
    let dir = common::temp_dir("parity");
    sift_lab::model::weights::save_hf_checkpoint(&weights, &pretrained.files.config, 2, dir.path())
        .unwrap();

    let config = eval::EvalConfig {
        model: common::default_model(),
        checkpoint: Some(dir.path().to_path_buf()),
        task: Task::Rte,
        data_dir: common::glue_dir(),
        split: Split::Dev,
        limit: Some(n),
        batch_size,
        max_len,
        seed: 12345, // must not matter: the checkpoint has a head
    };
    let report = eval::run(&config, &eval::EvalOptions::default()).unwrap();
    let predictions = &report.predictions;
    assert_eq!(report.scores.n_examples, n);

    // Same tokens as transformers' fast tokenizer.
    let loaded = model::load_pretrained(
        &config.model,
        config.checkpoint.as_deref(),
        2,
        0,
        &Device::Cpu,
    )
    .unwrap();
    let data = common::dataset(&loaded, Task::Rte, Split::Dev, max_len, n);
    let reference_ids: Vec<Vec<u32>> =
        serde_json::from_value(fixture["input_ids"].clone()).unwrap();
    for (i, ids) in reference_ids.iter().enumerate() {
        assert_eq!(&data.encoded[i].input_ids, ids, "token ids of example {i}");
    }

    let reference_logits: Vec<Vec<f32>> =
        serde_json::from_value(fixture["logits"].clone()).unwrap();
    let mut worst = 0f32;
    for (ours, theirs) in predictions.logits.iter().zip(&reference_logits) {
        for (a, b) in ours.iter().zip(theirs) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("max |logit - transformers logit| = {worst:e}");
    assert!(worst < 1e-6, "max |logit - transformers logit| = {worst}");
    let reference_loss = fixture["mean_loss"].as_f64().unwrap();
    assert!(
        (report.scores.mean_loss - reference_loss).abs() < 1e-5,
        "loss {} vs transformers {reference_loss}",
        report.scores.mean_loss
    );
    let reference_acc = fixture["accuracy"].as_f64().unwrap();
    assert_eq!(report.scores.metrics["accuracy"], reference_acc);
}
