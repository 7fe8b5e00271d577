//! `sift-lab sharpness` against the whole Hessian: on a BERT small enough to form it (1,488
//! parameters, built here), the dense Hessian is assembled column by column from exact
//! gradients (central differences, in f64) and checked symmetric; Lanczos' top eigenvalues and
//! Hutchinson's trace through the Hessian-vector products must equal its eigenvalues (Jacobi)
//! and its diagonal sum. Then the CLI on the real model: a resumable run and its refusals.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use sift_lab::backprop;
use sift_lab::data::Batch;
use sift_lab::model::{self, EncoderConfig, Increments, WeightMap};
use sift_lab::sharpness::eigen::{hutchinson, lanczos, symmetric_eigen, top_eigenvalues};
use sift_lab::sharpness::hvp::{Block, Hvp, Objective, Scope};

const STEP: f64 = 1e-3;

/// A 2-layer BERT, hidden 8, 2 heads, vocabulary 24: 1,488 parameters below the classifier.
fn tiny() -> (EncoderConfig, WeightMap, Vec<String>) {
    let config: EncoderConfig = serde_json::from_str(
        r#"{"model_type": "bert", "vocab_size": 24, "hidden_size": 8, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 12, "max_position_embeddings": 16,
            "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
            "pad_token_id": 0, "initializer_range": 0.5}"#,
    )
    .unwrap();
    let mut weights = WeightMap::new();
    let mut names = Vec::new();
    for (name, shape) in model::weights::expected_shapes(&config, 2).unwrap() {
        // Every tensor N(0, 0.5²) (LayerNorm and biases too): a Hessian with no zero blocks.
        let init = model::init::Init::Normal {
            std: 0.5,
            zero_row: None,
        };
        let t = model::init::draw(&name, &shape, init, 7, &Device::Cpu).unwrap();
        weights.insert(name.clone(), t.to_dtype(DType::F64).unwrap());
        if !model::weights::is_classifier(&name) {
            names.push(name);
        }
    }
    (config, weights, names)
}

/// Two batches (4 + 2 examples) of token pairs with padding; every first token attended.
fn batches() -> Vec<Batch> {
    let make = |ids: Vec<Vec<u32>>, lengths: &[usize], labels: Vec<u32>| {
        let (b, t) = (ids.len(), ids[0].len());
        let mask: Vec<u32> = lengths
            .iter()
            .flat_map(|&l| (0..t).map(move |i| (i < l) as u32))
            .collect();
        let ids: Vec<u32> = ids
            .into_iter()
            .zip(lengths)
            .flat_map(|(row, &l)| {
                row.into_iter()
                    .enumerate()
                    .map(move |(i, x)| if i < l { x } else { 0 })
            })
            .collect();
        let types: Vec<u32> = (0..b)
            .flat_map(|_| (0..t).map(|i| (i >= t / 2) as u32))
            .zip(&mask)
            .map(|(ty, m)| ty * m)
            .collect();
        Batch {
            input_ids: Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap(),
            token_type_ids: Tensor::from_vec(types, (b, t), &Device::Cpu).unwrap(),
            attention_mask: Tensor::from_vec(mask, (b, t), &Device::Cpu).unwrap(),
            labels: Tensor::from_vec(labels, b, &Device::Cpu).unwrap(),
            example_indices: (0..b).collect(),
        }
    };
    vec![
        make(
            vec![
                vec![1, 5, 9, 2, 7, 3, 11],
                vec![1, 4, 4, 2, 8, 3, 0],
                vec![1, 13, 6, 2, 20, 19, 3],
                vec![1, 22, 2, 17, 3, 0, 0],
            ],
            &[7, 6, 7, 5],
            vec![0, 1, 1, 0],
        ),
        make(
            vec![vec![1, 10, 12, 2, 15, 3], vec![1, 21, 2, 14, 3, 0]],
            &[6, 5],
            vec![1, 0],
        ),
    ]
}

/// The exact gradient of the mean loss over every example (batches weighted by size), over
/// `names` flattened in order, at `weights` + `shift` — straight from the backward pass.
fn exact_gradient(
    config: &EncoderConfig,
    weights: &WeightMap,
    names: &[String],
    batches: &[Batch],
    shift: Option<(usize, f64)>,
) -> Vec<f64> {
    let mut map = weights.clone();
    let mut vars = Vec::new();
    let mut offset = 0;
    for n in names {
        let t = &weights[n];
        let mut flat: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
        if let Some((i, h)) = shift {
            if i >= offset && i < offset + flat.len() {
                flat[i - offset] += h;
            }
        }
        offset += flat.len();
        let var =
            Var::from_tensor(&Tensor::from_vec(flat, t.shape(), &Device::Cpu).unwrap()).unwrap();
        map.insert(n.clone(), var.as_tensor().clone());
        vars.push(var);
    }
    let classifier = model::build_classifier(config, 2, &map, &Increments::new()).unwrap();
    let total: usize = batches.iter().map(Batch::len).sum();
    let mut g = vec![0.0; offset];
    for b in batches {
        let (_, grads) = backprop::loss_and_gradients(
            &classifier,
            &b.input_ids,
            &b.token_type_ids,
            &b.attention_mask,
            &b.labels,
        )
        .unwrap();
        let w = b.len() as f64 / total as f64;
        let flat: Vec<f64> = vars
            .iter()
            .flat_map(|v| {
                grads
                    .get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            })
            .collect();
        g.iter_mut().zip(&flat).for_each(|(g, x)| *g += w * x);
    }
    g
}

/// The dense Hessian (n × n, row-major), column i = (g(θ + h·e_i) − g(θ − h·e_i)) / 2h.
fn dense_hessian(
    config: &EncoderConfig,
    weights: &WeightMap,
    names: &[String],
    batches: &[Batch],
) -> (Vec<f64>, usize) {
    let n = exact_gradient(config, weights, names, batches, None).len();
    let mut h = vec![0.0; n * n];
    for i in 0..n {
        let plus = exact_gradient(config, weights, names, batches, Some((i, STEP)));
        let minus = exact_gradient(config, weights, names, batches, Some((i, -STEP)));
        for j in 0..n {
            h[j * n + i] = (plus[j] - minus[j]) / (2.0 * STEP);
        }
    }
    (h, n)
}

/// The tiny model, its batches and its dense Hessian, computed once for every test.
struct Fixture {
    config: EncoderConfig,
    weights: WeightMap,
    names: Vec<String>,
    batches: Vec<Batch>,
    hessian: Vec<f64>,
    n: usize,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        single_thread(|| {
            let (config, weights, names) = tiny();
            let batches = batches();
            let (hessian, n) = dense_hessian(&config, &weights, &names, &batches);
            Fixture {
                config,
                weights,
                names,
                batches,
                hessian,
                n,
            }
        })
    })
}

/// Runs `f` on a one-thread rayon pool: on matrices this small, handing work to other threads
/// costs more than the work (and on a busy machine, much more).
fn single_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(f)
}

fn max_abs(v: impl Iterator<Item = f64>) -> f64 {
    v.fold(0.0, |m, x| m.max(x.abs()))
}

/// The sub-matrix of `h` (n × n) on `rows` (indices into the flat parameter vector).
fn block(h: &[f64], n: usize, rows: &[usize]) -> Vec<f64> {
    rows.iter()
        .flat_map(|&i| rows.iter().map(move |&j| h[i * n + j]))
        .collect()
}

#[test]
fn lanczos_and_hutchinson_equal_the_dense_hessian_of_a_tiny_bert() {
    let f = fixture();
    single_thread(|| whole_model(f));
}

fn whole_model(f: &Fixture) {
    let (config, weights, names, batches) = (&f.config, &f.weights, &f.names, &f.batches);
    let (h, n) = (&f.hessian, f.n);
    assert_eq!(n, 1488);
    // Symmetric to finite-difference accuracy: the O(h²) truncation (h²/6 times third
    // derivatives) is ~1e-5 of the largest entry here.
    let scale = max_abs(h.iter().copied());
    let asym = max_abs(
        (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| h[i * n + j] - h[j * n + i]),
    );
    assert!(scale > 0.1, "a degenerate Hessian (max entry {scale})");
    assert!(
        asym < 5e-5 * scale,
        "asymmetry {asym} against max entry {scale}"
    );
    // The dense eigenvalues: Householder + bisection (Jacobi is too slow at n = 1,488).
    let eig = top_eigenvalues(h, n, 3);
    let trace: f64 = (0..n).map(|i| h[i * n + i]).sum();

    let objective = Objective::new(config, 2, weights, DType::F64, batches.clone()).unwrap();
    let scope = Scope::tensors(names);
    let mut hvp = Hvp::new(&objective, &scope, STEP).unwrap();
    assert_eq!(hvp.dim(), n);

    // Top 3 eigenvalues by 60 Lanczos steps: equal to the dense ones within 1e-4 of λ_1. Both
    // carry O(h²) finite-difference errors, but different ones: the dense columns difference
    // along single coordinates (third derivatives up to ~10 here), Lanczos along spread-out
    // unit vectors; the measured gap is 2.7e-5 of λ_1.
    let top = lanczos(n, 60, 3, 1, |v| hvp.apply(v)).unwrap();
    eprintln!(
        "dense top {:?}, Lanczos {:?} (residuals {:?}), asymmetry {asym}, scale {scale}",
        &eig[..3],
        top.values,
        top.residuals
    );
    for (i, (l, e)) in top.values.iter().zip(&eig).enumerate() {
        assert!(
            (l - e).abs() < 1e-4 * eig[0].abs(),
            "λ_{}: Lanczos {l}, dense {e} (residual {})",
            i + 1,
            top.residuals[i]
        );
    }

    // Hutchinson: unbiased, with Rademacher variance 2·Σ_{i≠j} H_ij² per probe (closed form).
    let off: f64 = (0..n)
        .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| h[i * n + j].powi(2))
        .sum();
    let sd = (2.0 * off).sqrt();
    let est = hutchinson(n, 100, 5, |v| hvp.apply(v)).unwrap();
    eprintln!(
        "trace dense {trace}, Hutchinson {} ± {} (σ/√P {})",
        est.trace,
        est.std_error,
        sd / 100f64.sqrt()
    );
    let expected_se = sd / 100f64.sqrt();
    assert!(
        (est.trace - trace).abs() < 4.0 * expected_se,
        "trace {} ± {} vs dense {trace} (σ/√P = {expected_se})",
        est.trace,
        est.std_error
    );
    assert!(
        (est.std_error / expected_se - 1.0).abs() < 0.25,
        "s.e. {} vs {expected_se}",
        est.std_error
    );

    // The error shrinks as 1/√probes: RMS error over 40 seeds at 2, 8, 32 probes, against σ/√P.
    let mut rms = Vec::new();
    for probes in [2usize, 8, 32] {
        let sq: f64 = (0..40u64)
            .map(|seed| {
                (hutchinson(n, probes, 100 + seed, |v| hvp.apply(v))
                    .unwrap()
                    .trace
                    - trace)
                    .powi(2)
            })
            .sum();
        let r = (sq / 40.0).sqrt();
        eprintln!(
            "{probes} probes: RMS error {r}, σ/√P {}",
            sd / (probes as f64).sqrt()
        );
        let want = sd / (probes as f64).sqrt();
        assert!(
            (r / want - 1.0).abs() < 0.35,
            "{probes} probes: RMS error {r} vs σ/√P {want}"
        );
        rms.push(r);
    }
    assert!(
        rms[0] > 1.4 * rms[1] && rms[1] > 1.4 * rms[2],
        "RMS errors {rms:?} do not halve per 4× probes"
    );
}

#[test]
fn a_masked_or_single_tensor_scope_is_the_dense_hessians_sub_block() {
    let f = fixture();
    single_thread(|| sub_blocks(f));
}

fn sub_blocks(f: &Fixture) {
    let (config, weights, names, batches) = (&f.config, &f.weights, &f.names, &f.batches);
    let (h, n) = (&f.hessian, f.n);
    let objective = Objective::new(config, 2, weights, DType::F64, batches.clone()).unwrap();
    // Flat offsets of each tensor in the dense order.
    let mut offsets = std::collections::BTreeMap::new();
    let mut o = 0;
    for name in names {
        offsets.insert(name.clone(), o);
        o += weights[name].elem_count();
    }

    // A mask: 30 entries of layer 0's value weight and 12 of layer 1's FFN output weight.
    let v0 = "encoder.layer.0.attention.self.value.weight".to_string();
    let f1 = "encoder.layer.1.output.dense.weight".to_string();
    let (m0, m1): (Vec<u32>, Vec<u32>) = (
        (0..30).map(|i| i * 2 + 1).collect(),
        (0..12).map(|i| i * 7).collect(),
    );
    let scope = Scope {
        blocks: vec![
            Block {
                name: v0.clone(),
                indices: Some(m0.clone()),
            },
            Block {
                name: f1.clone(),
                indices: Some(m1.clone()),
            },
        ],
    };
    let rows: Vec<usize> = m0
        .iter()
        .map(|&i| offsets[&v0] + i as usize)
        .chain(m1.iter().map(|&i| offsets[&f1] + i as usize))
        .collect();
    let sub = block(h, n, &rows);
    let (eig, _) = symmetric_eigen(&sub, rows.len());
    let mut hvp = Hvp::new(&objective, &scope, STEP).unwrap();
    // As many steps as dimensions: every eigenvalue.
    let all = lanczos(rows.len(), rows.len(), 3, 2, |v| hvp.apply(v)).unwrap();
    for (l, e) in all.values.iter().zip(&eig) {
        assert!(
            (l - e).abs() < 1e-6 * eig[0].abs().max(1e-3),
            "masked: Lanczos {l}, dense {e}"
        );
    }

    // One whole tensor (the pooler weight).
    let pooler = "pooler.dense.weight".to_string();
    let rows: Vec<usize> = (0..weights[&pooler].elem_count())
        .map(|i| offsets[&pooler] + i)
        .collect();
    let sub = block(h, n, &rows);
    let (eig, _) = symmetric_eigen(&sub, rows.len());
    let scope = Scope::tensors(std::slice::from_ref(&pooler));
    let mut hvp = Hvp::new(&objective, &scope, STEP).unwrap();
    let top = lanczos(rows.len(), 40, 2, 3, |v| hvp.apply(v)).unwrap();
    for (l, e) in top.values.iter().zip(&eig) {
        assert!(
            (l - e).abs() < 1e-6 * eig[0].abs(),
            "pooler: Lanczos {l}, dense {e}"
        );
    }
}

/// The CLI on the real model, kept cheap: only the pooler weight is in scope, 4 examples.
#[test]
fn a_run_resumes_and_refuses_to_overwrite_or_mix_configurations() {
    let dir = common::temp_dir("sharpness");
    let out = dir.path().join("s");
    let args = |extra: &[&str]| {
        let mut cmd = common::sift_lab();
        cmd.args([
            "--threads",
            "2",
            "sharpness",
            "--task",
            "rte",
            "--alpha",
            "0:1:2",
        ])
        .args([
            "--scopes",
            "tensors,random",
            "--scope-tensors",
            "pooler.dense.weight",
        ])
        .args(["--mask-modules", "v", "--mask-rate", "0.001"])
        .args([
            "--iterations",
            "3",
            "--probes",
            "2",
            "--eval-examples",
            "4",
            "--max-len",
            "32",
        ])
        .arg("--data-dir")
        .arg(common::glue_dir())
        .arg("--out")
        .arg(&out)
        .args(extra);
        cmd
    };
    let first = common::run_ok(&mut args(&[]));
    assert!(first.contains("4 of 4 cells (4 computed now"), "{first}");
    for f in [
        "sharpness.parquet",
        "summary.json",
        "sharpness_alpha.png",
        "sharpness_alpha.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let (config, rows) = sift_lab::sharpness::read_file(&out.join("sharpness.parquet")).unwrap();
    assert_eq!(config.scopes, vec!["tensors", "random"]);
    assert_eq!(rows.len(), 4);
    // random: 0.1 % of six 384 × 384 value weights = 147 entries each.
    let random = rows.iter().find(|r| r.scope == "random").unwrap();
    assert_eq!(random.params, 6 * 147);
    assert!(rows
        .iter()
        .all(|r| r.eigenvalues[0].is_finite() && r.trace_se.is_finite() && r.hvps == 5));

    let again = common::run_ok(&mut args(&["--resume"]));
    assert!(
        again.contains("(0 computed now, 4 already there"),
        "{again}"
    );
    let err = common::run_err(&mut args(&[]));
    assert!(
        err.contains("already exists") && err.contains("--resume"),
        "{err}"
    );
    let err = common::run_err(&mut args(&["--resume", "--fd-step", "0.01"]));
    assert!(err.contains("fd_step"), "{err}");
}
