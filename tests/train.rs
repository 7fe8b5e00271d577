//! SIFT and its baselines on the real model and data: gradients of the sparse increment,
//! selection, budgets, optimizer state, a real short run, export → eval, and resume.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use candle_core::{DType, Device, Tensor, Var};
use sift_lab::backprop;
use sift_lab::budget::{self, Selection};
use sift_lab::data::{BatchOrder, Split, Task};
use sift_lab::methods::{FineTuning, MethodKind};
use sift_lab::model::{self, Mode};
use sift_lab::optim::{AdamW, AdamWConfig};
use sift_lab::select;

/// The batch's mean loss through the candle-graph forward, in training mode.
fn loss(
    pretrained: &model::Pretrained,
    weights: &impl model::ClassifierWeights,
    b: &sift_lab::data::Batch,
) -> Tensor {
    common::loss_of(pretrained, weights, b, Mode::Training)
}

fn head(pretrained: &model::Pretrained) -> Vec<String> {
    model::weights::head_names(&pretrained.config, pretrained.num_labels).unwrap()
}

fn shapes(pretrained: &model::Pretrained, names: &[String]) -> Vec<(String, Vec<usize>)> {
    names
        .iter()
        .map(|n| (n.clone(), pretrained.weights[n].dims().to_vec()))
        .collect()
}

/// The gradient of Δ's values (factored sparse path for weights, scatter path for biases)
/// equals the dense gradient of W gathered at the selected indices, computed independently.
#[test]
fn delta_gradient_equals_the_dense_gradient_at_the_selected_entries() {
    let pretrained = common::pretrained(2);
    let b = common::rte_batch(&pretrained, 4, 48);
    let targets = select::target_names("attention", &pretrained.config).unwrap();
    assert_eq!(targets.len(), 6 * 8);
    let selected = budget::select_random(&shapes(&pretrained, &targets), 0.01, 3);
    let method = FineTuning::sparse(
        MethodKind::Sift,
        &pretrained.weights,
        &head(&pretrained),
        &selected,
    )
    .unwrap();
    let grads = loss(&pretrained, &method.effective_weights().unwrap(), &b)
        .backward()
        .unwrap();

    // Independent: every target a dense Var, plain backward, gather.
    let mut dense = pretrained.weights.clone();
    let vars: BTreeMap<String, Var> = targets
        .iter()
        .map(|n| (n.clone(), Var::from_tensor(&pretrained.weights[n]).unwrap()))
        .collect();
    for (n, v) in &vars {
        dense.insert(n.clone(), v.as_tensor().clone());
    }
    let dense_grads = loss(&pretrained, &dense, &b).backward().unwrap();
    let params = method.params().unwrap();
    let mut compared = 0;
    for (name, indices) in &selected {
        let idx = Tensor::new(indices.as_slice(), &Device::Cpu).unwrap();
        let expected = dense_grads
            .get(vars[name].as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .index_select(&idx, 0)
            .unwrap();
        let param = params
            .iter()
            .find(|p| p.name == format!("{name}.delta"))
            .unwrap();
        let got = grads.get(param.var.as_tensor()).unwrap();
        let scale = expected
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1e-8);
        let diff = common::max_abs_diff(&got, &expected);
        assert!(
            diff / scale < 1e-4,
            "{name}: max |Δ grad − dense grad| = {diff} (scale {scale})"
        );
        compared += 1;
    }
    assert_eq!(compared, 48);
}

/// After an update, the factored forward (W + sparse Δ) equals the dense merged weights'.
#[test]
fn an_update_takes_effect_on_the_next_forward_and_merges_exactly() {
    let pretrained = common::pretrained(2);
    let b = common::rte_batch(&pretrained, 4, 48);
    let targets = select::target_names("q,k,v,o", &pretrained.config).unwrap();
    let selected = budget::select_random(&shapes(&pretrained, &targets), 0.01, 5);
    let method = FineTuning::sparse(
        MethodKind::Sift,
        &pretrained.weights,
        &head(&pretrained),
        &selected,
    )
    .unwrap();
    let before = loss(&pretrained, &method.effective_weights().unwrap(), &b)
        .to_scalar::<f32>()
        .unwrap();
    let mut opt = AdamW::new(method.params().unwrap(), AdamWConfig::default()).unwrap();
    let grads = opt
        .gradients(
            &loss(&pretrained, &method.effective_weights().unwrap(), &b)
                .backward()
                .unwrap(),
        )
        .unwrap();
    opt.step(&grads, 1e-3).unwrap();
    let after = loss(&pretrained, &method.effective_weights().unwrap(), &b)
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        after < before,
        "one step did not lower the batch loss: {before} → {after}"
    );
    let merged = loss(&pretrained, &method.merged().unwrap(), &b)
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        (merged - after).abs() < 1e-5,
        "factored {after} vs merged {merged}"
    );
    // Only the selected entries moved.
    let name = &targets[0];
    let moved = (&method.merged().unwrap()[name] - &pretrained.weights[name])
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let changed: Vec<u32> = moved
        .iter()
        .enumerate()
        .filter(|(_, d)| **d != 0.0)
        .map(|(i, _)| i as u32)
        .collect();
    assert_eq!(changed, selected[name]);
}

/// SIFT's selection is the top-k of |Σ_batches ∂L/∂W| per tensor, recomputed here by full sort.
#[test]
fn sift_selects_the_top_k_of_the_accumulated_gradient() {
    let pretrained = common::pretrained(2);
    let train = common::dataset(&pretrained, Task::Rte, Split::Train, 48, 24);
    let targets = select::target_names("v", &pretrained.config).unwrap()[..2].to_vec();
    let config = common::train_config("sift", 8, 2);
    let accumulated =
        sift_lab::train::accumulated_gradients(&pretrained, &train, &targets, &config).unwrap();
    let selected = budget::select_by_gradient(&accumulated, 0.01, Selection::PerTensor);

    // Independent accumulation, batch by batch, in the same shuffled order.
    let mut weights = pretrained.weights.clone();
    let vars: Vec<Var> = targets
        .iter()
        .map(|n| Var::from_tensor(&pretrained.weights[n]).unwrap())
        .collect();
    for (n, v) in targets.iter().zip(&vars) {
        weights.insert(n.clone(), v.as_tensor().clone());
    }
    let mut sums: Vec<Vec<f32>> = vec![vec![0.0; 384 * 384]; targets.len()];
    for b in train
        .batches(
            8,
            BatchOrder::Shuffled {
                seed: config.seed,
                epoch: 0,
            },
            &Device::Cpu,
        )
        .take(2)
    {
        let grads = loss(&pretrained, &weights, &b.unwrap()).backward().unwrap();
        for (sum, v) in sums.iter_mut().zip(&vars) {
            let g = grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            sum.iter_mut().zip(g).for_each(|(s, x)| *s += x);
        }
    }
    for (name, sum) in targets.iter().zip(&sums) {
        let k = 1474; // ⌊0.01 · 384 · 384⌋
        let mut order: Vec<usize> = (0..sum.len()).collect();
        order.sort_by(|&a, &b| sum[b].abs().total_cmp(&sum[a].abs()));
        let mut expected: Vec<u32> = order[..k].iter().map(|&i| i as u32).collect();
        expected.sort_unstable();
        let overlap = expected
            .iter()
            .filter(|i| selected[name].binary_search(i).is_ok())
            .count();
        // Summation order differs (f32), so allow a swap or two at the k-th boundary.
        assert!(overlap >= k - 2, "{name}: only {overlap} of {k} agree");
        assert_eq!(selected[name].len(), k);
    }
    // Global selection spends the same total budget.
    let global = budget::select_by_gradient(&accumulated, 0.01, Selection::Global);
    assert_eq!(global.values().map(Vec::len).sum::<usize>(), 2 * 1474);
}

#[test]
fn the_random_arm_reproduces_from_its_seed() {
    let pretrained = common::pretrained(2);
    let targets = select::target_names("q,k,v,o", &pretrained.config).unwrap();
    let s = shapes(&pretrained, &targets);
    let a = budget::select_random(&s, 0.01, 11);
    let b = budget::select_random(&s, 0.01, 11);
    let c = budget::select_random(&s, 0.01, 12);
    assert_eq!(a, b);
    assert_ne!(a, c);
    for indices in a.values() {
        assert_eq!(indices.len(), 1474);
        assert!(indices.windows(2).all(|w| w[0] < w[1]) && *indices.last().unwrap() < 384 * 384);
    }
}

#[test]
fn trainable_counts_and_optimizer_state_are_what_the_budget_says() {
    let pretrained = common::pretrained(2);
    let head = head(&pretrained);
    let head_count: usize = head
        .iter()
        .map(|n| pretrained.weights[n].elem_count())
        .sum();
    assert_eq!(head_count, 384 * 384 + 384 + 2 * 384 + 2);
    let targets = select::target_names("q,k,v,o", &pretrained.config).unwrap();
    assert_eq!(targets.len(), 24);

    // LoRA: r·(m + n) per m×n matrix.
    let lora = FineTuning::lora(&pretrained.weights, &head, &targets, 8, 16.0, 0).unwrap();
    assert_eq!(
        lora.trainable_count().unwrap(),
        24 * 8 * (384 + 384) + head_count
    );

    // SIFT: the optimizer holds k-sized tensors only (two moments each).
    let selected = budget::select_random(&shapes(&pretrained, &targets), 0.01, 0);
    let sift = FineTuning::sparse(MethodKind::Sift, &pretrained.weights, &head, &selected).unwrap();
    let opt = AdamW::new(sift.params().unwrap(), AdamWConfig::default()).unwrap();
    let state: usize = opt.state_tensors().map(|t| t.elem_count()).sum();
    assert_eq!(state, 2 * (24 * 1474 + head_count));
    assert!(opt.state_tensors().all(|t| t.elem_count() <= 384 * 384));

    let full = FineTuning::dense(MethodKind::Full, &pretrained.weights, &head).unwrap();
    let full_opt = AdamW::new(full.params().unwrap(), AdamWConfig::default()).unwrap();
    let ratio = opt.state_bytes() as f64 / full_opt.state_bytes() as f64;
    assert!(
        ratio < 0.03,
        "SIFT optimizer state is {:.2} % of full's",
        100.0 * ratio
    );
}

#[test]
fn bad_settings_name_the_flag() {
    let glue = common::glue_dir();
    let run = |args: &[&str]| -> String {
        let out = common::temp_dir("bad-train");
        let o = Command::new(env!("CARGO_BIN_EXE_sift-lab"))
            .env("HF_HUB_OFFLINE", "1")
            .args(["train", "--task", "rte"])
            .arg("--data-dir")
            .arg(&glue)
            .arg("--out")
            .arg(out.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(run(&["--rate", "0"]).contains("--rate"));
    assert!(run(&["--rate", "1.5"]).contains("--rate"));
    let e = run(&["--modules", "q,zz"]);
    assert!(e.contains("--modules") && e.contains("zz"), "{e}");
    assert!(run(&["--method", "lora", "--lora-rank", "0"]).contains("--lora-rank"));

    // A task folder with a dev split only.
    let data = common::temp_dir("dev-only");
    std::fs::create_dir_all(data.path().join("RTE")).unwrap();
    std::fs::copy(glue.join("RTE/dev.tsv"), data.path().join("RTE/dev.tsv")).unwrap();
    let out = common::temp_dir("dev-only-out");
    let o = Command::new(env!("CARGO_BIN_EXE_sift-lab"))
        .env("HF_HUB_OFFLINE", "1")
        .args(["train", "--task", "rte"])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    let missing = data.path().join("RTE/train.tsv");
    assert!(
        !o.status.success() && e.contains(&format!("{} not found", missing.display())),
        "{e}"
    );
}

/// A short real SIFT run on RTE lowers the training loss; the exported checkpoint evaluates to
/// exactly what the run reported; results land in RUN_DIR.
#[test]
fn a_short_sift_run_learns_and_its_export_evaluates_identically() {
    let out = common::temp_dir("sift-run");
    let export = out.path().join("hf");
    let mut config = common::train_config("sift", 16, 1);
    config.train_limit = Some(64);
    config.eval_limit = Some(48);
    config.epochs = 4;
    config.lr = 2e-3;
    config.log_every = 1;
    let options = sift_lab::train::TrainOptions {
        export_hf: Some(export.clone()),
        ..sift_lab::train::TrainOptions::new(out.path())
    };
    let report = sift_lab::train::run(&config, &options).unwrap();
    let summary = report.summary;
    assert_eq!(summary.status, "completed");
    assert_eq!(summary.steps, 16);

    let metrics = sift_lab::output::read_parquet(&out.path().join("metrics.parquet")).unwrap();
    let kind_column = metrics.column("kind").unwrap().str().unwrap().clone();
    let kinds: Vec<String> = (0..metrics.height())
        .map(|i| kind_column.get(i).unwrap().to_string())
        .collect();
    let losses: Vec<f64> = metrics
        .column("train_loss")
        .unwrap()
        .f64()
        .unwrap()
        .into_no_null_iter()
        .collect();
    let epoch_losses: Vec<f64> = kinds
        .iter()
        .zip(&losses)
        .filter(|(k, _)| *k == "epoch")
        .map(|(_, l)| *l)
        .collect();
    assert_eq!(epoch_losses.len(), 4);
    assert!(
        epoch_losses[3] < epoch_losses[0] - 0.02,
        "training loss per epoch {epoch_losses:?}"
    );

    // Export → eval: the same dev loss and accuracy the run reported for its last epoch.
    let report = sift_lab::eval::run(
        &sift_lab::eval::EvalConfig {
            model: config.model.clone(),
            checkpoint: Some(export.clone()),
            task: Task::Rte,
            data_dir: config.data_dir.clone(),
            split: Split::Dev,
            limit: Some(48),
            batch_size: 64,
            max_len: config.max_len,
            seed: 999,
        },
        &sift_lab::eval::EvalOptions::default(),
    )
    .unwrap();
    let last = summary.last_epoch.unwrap();
    assert!(
        (report.scores.mean_loss - last.dev_loss).abs() < 1e-6,
        "{} vs {}",
        report.scores.mean_loss,
        last.dev_loss
    );
    assert_eq!(report.scores.metrics["accuracy"], last.metrics["accuracy"]);
    assert!(
        out.path().join("delta.safetensors").is_file() && out.path().join("summary.json").is_file()
    );
    let delta =
        candle_core::safetensors::load(out.path().join("delta.safetensors"), &Device::Cpu).unwrap();
    let idx = &delta["encoder.layer.0.attention.self.query.weight.indices"];
    assert_eq!((idx.dtype(), idx.elem_count()), (DType::U32, 1474));
}

/// Kill a run after its first epoch's checkpoint, resume it, and get the uninterrupted result.
#[test]
fn resume_after_a_kill_matches_an_uninterrupted_run() {
    let glue = common::glue_dir();
    let args = |out: &std::path::Path| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--task",
            "rte",
            "--method",
            "random",
            "--train-limit",
            "48",
            "--eval-limit",
            "16",
            "--batch-size",
            "16",
            "--max-len",
            "32",
            "--epochs",
            "3",
            "--lr",
            "1e-3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend([
            "--data-dir".into(),
            glue.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]);
        a
    };
    let run = |extra: &[&str], out: &std::path::Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_sift-lab"))
            .env("HF_HUB_OFFLINE", "1")
            .args(args(out))
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let clean = common::temp_dir("clean");
    run(&[], clean.path());

    let killed = common::temp_dir("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sift-lab"))
        .env("HF_HUB_OFFLINE", "1")
        .args(args(killed.path()))
        .spawn()
        .unwrap();
    let checkpoint = killed.path().join("state/checkpoint.json");
    let start = std::time::Instant::now();
    while !checkpoint.exists() {
        assert!(start.elapsed().as_secs() < 300, "no checkpoint written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
    assert!(
        done["epochs_completed"].as_u64().unwrap() < 3,
        "the run finished before it was killed"
    );
    run(&["--resume"], killed.path());

    let read = |dir: &std::path::Path| {
        candle_core::safetensors::load(dir.join("delta.safetensors"), &Device::Cpu).unwrap()
    };
    let (a, b) = (read(clean.path()), read(killed.path()));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let d = (t.to_dtype(DType::F64).unwrap() - b[name].to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(d < 1e-6, "{name} differs by {d}");
    }
    // And a plain rerun into a finished directory is refused rather than overwriting it.
    let o = Command::new(env!("CARGO_BIN_EXE_sift-lab"))
        .env("HF_HUB_OFFLINE", "1")
        .args(args(clean.path()))
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--resume"));
}

/// The hand-written training pass (`backprop::loss_and_gradients`) gives the loss and every
/// gradient that candle's autograd gives on the same model, in f64, for each method: full,
/// head-only, SIFT on every tensor kind (factored Δ on weights; W + scatter on biases,
/// LayerNorm and embeddings), LoRA with non-zero B, and a regression head.
#[test]
fn hand_written_pass_equals_candle_autograd_for_every_method() {
    for num_labels in [2, 1] {
        let mut pretrained = common::pretrained(num_labels);
        pretrained.weights = pretrained
            .weights
            .iter()
            .map(|(n, t)| (n.clone(), t.to_dtype(DType::F64).unwrap()))
            .collect();
        let mut b = common::rte_batch(&pretrained, 3, 40);
        if num_labels == 1 {
            b.labels = Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap();
        }
        assert!(
            b.attention_mask
                .sum_all()
                .unwrap()
                .to_scalar::<u32>()
                .unwrap()
                < 3 * 40,
            "the batch should have padding"
        );
        let head = head(&pretrained);
        let all = select::target_names("all", &pretrained.config).unwrap();
        let linear = select::target_names("q,k,v,o,ffn", &pretrained.config).unwrap();
        let mut cases = vec![
            (
                "full",
                FineTuning::dense(MethodKind::Full, &pretrained.weights, &head).unwrap(),
            ),
            (
                "head",
                FineTuning::dense(MethodKind::Head, &pretrained.weights, &head).unwrap(),
            ),
            (
                "sift on every tensor",
                FineTuning::sparse(
                    MethodKind::Sift,
                    &pretrained.weights,
                    &head,
                    &budget::select_random(&shapes(&pretrained, &all), 0.02, 5),
                )
                .unwrap(),
            ),
            (
                "lora",
                FineTuning::lora(&pretrained.weights, &head, &linear, 4, 8.0, 1).unwrap(),
            ),
        ];
        if num_labels == 1 {
            cases.truncate(1);
        }
        for (label, method) in cases.iter_mut() {
            // (The key bias's gradient is exactly zero in theory, ~1e-20 in practice: hence the
            // floor on the scale.)
            // Non-zero increments, so that Δ and B·A take part in the forward pass too.
            for (i, p) in method.params().unwrap().iter().enumerate() {
                if p.name.ends_with(".delta") || p.name.ends_with(".lora_B") {
                    let noise = common::seeded_normal(p.var.shape(), 0.02, i as u64);
                    p.var.set(&noise).unwrap_or_else(|e| panic!("{i}: {e}"));
                }
            }
            let classifier = pretrained
                .build(&method.effective_weights().unwrap())
                .unwrap();
            let autograd_loss = loss(&pretrained, &method.effective_weights().unwrap(), &b);
            let expected = autograd_loss.backward().unwrap();
            let (got_loss, got) = backprop::loss_and_gradients(
                &classifier,
                &b.input_ids,
                &b.token_type_ids,
                &b.attention_mask,
                &b.labels,
            )
            .unwrap();
            let expected_loss = autograd_loss.to_scalar::<f64>().unwrap();
            // Evaluation's packed forward pass gives candle's logits too.
            let packed = backprop::logits(
                &classifier,
                &b.input_ids,
                &b.token_type_ids,
                &b.attention_mask,
            )
            .unwrap();
            let reference = classifier
                .forward(
                    &b.input_ids,
                    &b.token_type_ids,
                    &b.attention_mask,
                    Mode::Training,
                )
                .unwrap();
            let logit_diff = max_abs_f64(&(packed - reference).unwrap());
            assert!(
                logit_diff < 1e-12,
                "{label}: logits differ by {logit_diff:e}"
            );
            assert!(
                (got_loss - expected_loss).abs() < 1e-12,
                "{label}: loss {got_loss} vs {expected_loss}"
            );
            let params = method.params().unwrap();
            for p in &params {
                let want = expected
                    .get(p.var.as_tensor())
                    .unwrap_or_else(|| panic!("{label}: autograd gave no gradient for {}", p.name));
                let have = got
                    .get(p.var.as_tensor())
                    .unwrap_or_else(|| panic!("{label}: no gradient for {}", p.name));
                let scale = max_abs_f64(want).max(1e-6);
                let diff = max_abs_f64(&(have - want).unwrap());
                assert!(
                    diff <= 1e-9 * scale,
                    "{label}: {} differs by {diff:e} (scale {scale:e})",
                    p.name
                );
            }
            eprintln!("{label}: {} gradients agree", params.len());
        }
    }
}

/// max |t| of an f64 tensor.
fn max_abs_f64(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
