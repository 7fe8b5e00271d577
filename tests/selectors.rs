//! Selection rules (src/selectors) against hand-worked cases and independent computations on
//! the real model and data: each rule's picks, fisher vs gradient, movement against a hand-made
//! AdamW warm-up, reselection (plan, the moved mask and optimizer state, resume), the `quick`
//! selectors grid end to end, and `sift-lab masks`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use common::{run_ok, sift_lab};
use sift_lab::budget::{self, Selection};
use sift_lab::data::{BatchOrder, Split, Task};
use sift_lab::methods::{FineTuning, MethodKind};
use sift_lab::model::{self, Mode};
use sift_lab::optim::{AdamW, AdamWConfig};
use sift_lab::select;
use sift_lab::selectors::reselect::{self, ReselectSettings, Reselection};
use sift_lab::selectors::score::{self, BatchPlan, GradientSums};
use sift_lab::selectors::{Masks, SelectionInputs, Selector};

fn map<T: Clone>(entries: &[(&str, Vec<T>)]) -> BTreeMap<String, Vec<T>> {
    entries
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
}

/// The hand case's first batch of gradients (g1 of a, g1 of b).
fn first_batch_of_hand_case() -> [Vec<f32>; 2] {
    [
        vec![1.0, -2.0, 0.1, 3.0, -0.5, 0.0],
        vec![2.0, 1.0, -5.0, 1.0],
    ]
}

/// Two small tensors, a (6 entries) and b (4), with known weights and two batches' gradients.
/// Worked by hand:
///   a: W = [0.5, −0.1, 2, −0.02, 1, −3]; g1 = [1, −2, 0.1, 3, −0.5, 0]; g2 = [−1, −2, 0.2, 0.5, 0.5, 0.1]
///      |Σg| = [0, 4, 0.3, 3.5, 0, 0.1];  Σg² = [2, 8, 0.05, 9.25, 0.5, 0.01];  |W| = [0.5, 0.1, 2, 0.02, 1, 3]
///   b: W = [3.3, −4, 2.5, 0.7];          g1 = [2, 1, −5, 1];   g2 = [2, 1.5, 5, 1]
///      |Σg| = [4, 2.5, 0, 2];             Σg² = [8, 3.25, 50, 2];           |W| = [3.3, 4, 2.5, 0.7]
/// Rate 0.5: k = 3 of a, 2 of b, 5 in all.
fn hand_case() -> (GradientSums, BTreeMap<String, Vec<f32>>) {
    let names = vec!["a".to_string(), "b".to_string()];
    let mut sums = GradientSums::default();
    sums.add(&names, &first_batch_of_hand_case());
    sums.add(
        &names,
        &[
            vec![-1.0, -2.0, 0.2, 0.5, 0.5, 0.1],
            vec![2.0, 1.5, 5.0, 1.0],
        ],
    );
    let weights = map(&[
        ("a", vec![0.5, -0.1, 2.0, -0.02, 1.0, -3.0]),
        ("b", vec![3.3, -4.0, 2.5, 0.7]),
    ]);
    (sums, weights)
}

#[test]
fn each_rule_picks_the_hand_worked_entries_per_tensor_and_globally() {
    let (sums, weights) = hand_case();
    let pick = |scores: &BTreeMap<String, Vec<f32>>, selection| {
        let m = budget::select_by_score(scores, 0.5, selection);
        (m["a"].clone(), m["b"].clone())
    };
    let per = Selection::PerTensor;
    let global = Selection::Global;
    let gradient = score::gradient_scores(&sums);
    let fisher = score::fisher_scores(&sums);
    let largest = score::magnitude_scores(&weights, true);
    let smallest = score::magnitude_scores(&weights, false);
    // Per tensor: the 3 best of a, the 2 best of b.
    assert_eq!(pick(&gradient, per), (vec![1, 2, 3], vec![0, 1]));
    assert_eq!(pick(&fisher, per), (vec![0, 1, 3], vec![0, 2]));
    assert_eq!(pick(&largest, per), (vec![2, 4, 5], vec![0, 1]));
    assert_eq!(pick(&smallest, per), (vec![0, 1, 3], vec![2, 3]));
    // Globally: the 5 best of the 10 together.
    // gradient: a1 4, b0 4, a3 3.5, b1 2.5, b3 2 (a2's 0.3 misses).
    assert_eq!(pick(&gradient, global), (vec![1, 3], vec![0, 1, 3]));
    // fisher: b2 50, a3 9.25, a1 8, b0 8, b1 3.25.
    assert_eq!(pick(&fisher, global), (vec![1, 3], vec![0, 1, 2]));
    // largest |W|: b1 4, b0 3.3, a5 3, b2 2.5, a2 2.
    assert_eq!(pick(&largest, global), (vec![2, 5], vec![0, 1, 2]));
    // smallest |W|: a3 0.02, a1 0.1, a0 0.5, b3 0.7, a4 1.
    assert_eq!(pick(&smallest, global), (vec![0, 1, 3, 4], vec![3]));
    // The gradient rule is the paper's top-k |Σ G| (budget::select_by_gradient on Σ G).
    for selection in [per, global] {
        assert_eq!(
            budget::select_by_score(&gradient, 0.5, selection),
            budget::select_by_gradient(&sums.sum, 0.5, selection)
        );
    }
}

#[test]
fn fisher_and_gradient_differ_exactly_where_batch_gradients_cancel() {
    let (sums, _) = hand_case();
    let gradient =
        budget::select_by_score(&score::gradient_scores(&sums), 0.5, Selection::PerTensor);
    let fisher = budget::select_by_score(&score::fisher_scores(&sums), 0.5, Selection::PerTensor);
    // a0 (+1, −1) and b2 (−5, +5) cancel: |Σg| = 0, never picked by gradient; Σg² picks both.
    assert!(!gradient["a"].contains(&0) && fisher["a"].contains(&0));
    assert!(!gradient["b"].contains(&2) && fisher["b"].contains(&2));
    // One batch: g² orders like |g|, so the two rules pick the same entries.
    let names = vec!["a".to_string(), "b".to_string()];
    let mut one = GradientSums::default();
    one.add(&names, &first_batch_of_hand_case());
    for selection in [Selection::PerTensor, Selection::Global] {
        assert_eq!(
            budget::select_by_score(&score::gradient_scores(&one), 0.5, selection),
            budget::select_by_score(&score::fisher_scores(&one), 0.5, selection)
        );
    }
}

/// The gradient rule on the real model picks exactly what `train --method sift` picked before
/// the rules existed (`train::accumulated_gradients` + `budget::select_by_gradient`).
#[test]
fn the_gradient_rule_is_the_old_sift_selection_on_real_data() {
    let pretrained = common::pretrained(2);
    let train = common::dataset(&pretrained, Task::Rte, Split::Train, 48, 24);
    let targets = select::target_names("q,v", &pretrained.config).unwrap()[..3].to_vec();
    let config = common::train_config("sift", 8, 2);
    let old = budget::select_by_gradient(
        &sift_lab::train::accumulated_gradients(&pretrained, &train, &targets, &config).unwrap(),
        0.01,
        Selection::Global,
    );
    let mut masks = Masks::new(SelectionInputs {
        pretrained: &pretrained,
        train: &train,
        targets: &targets,
        rate: 0.01,
        selection: Selection::Global,
        batches: 2,
        batch_size: 8,
        seed: config.seed,
        movement_steps: 1,
        movement_lr: 1e-3,
    });
    assert_eq!(masks.mask(Selector::Gradient).unwrap(), old);
    // Magnitude on the real weights: the k largest |W| by full sort.
    let per_tensor = budget::select_by_score(
        &score::magnitude_scores(
            &score::flat_values(&pretrained.weights, &targets).unwrap(),
            true,
        ),
        0.01,
        Selection::PerTensor,
    );
    for name in &targets {
        let w: Vec<f32> = pretrained.weights[name]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut order: Vec<usize> = (0..w.len()).collect();
        order.sort_by(|&i, &j| w[j].abs().total_cmp(&w[i].abs()).then(i.cmp(&j)));
        let mut expected: Vec<u32> = order[..1474].iter().map(|&i| i as u32).collect();
        expected.sort_unstable();
        assert_eq!(per_tensor[name], expected, "{name}");
    }
}

/// Movement: two steps of full fine-tuning with AdamW, recomputed here from candle's autograd
/// and the AdamW formulas written out (β = 0.9, 0.999, ε = 1e-8, bias-corrected).
#[test]
fn movement_picks_the_entries_a_hand_computed_adamw_warm_up_moves_most() {
    let pretrained = common::pretrained(2);
    let train = common::dataset(&pretrained, Task::Rte, Split::Train, 32, 16);
    let targets = vec![
        "encoder.layer.0.attention.self.query.weight".to_string(),
        "encoder.layer.5.attention.output.dense.weight".to_string(),
    ];
    let (lr, seed, batch_size) = (1e-3, 42, 4);
    let plan = BatchPlan {
        train: &train,
        batch_size,
        seed,
    };
    let theta_t = score::movement_warmup(&pretrained, &plan, &targets, 2, lr).unwrap();

    let batches: Vec<_> = train
        .batches(
            batch_size,
            BatchOrder::Shuffled { seed, epoch: 0 },
            &Device::Cpu,
        )
        .take(2)
        .map(|b| b.unwrap())
        .collect();
    let names: Vec<String> = pretrained.weights.keys().cloned().collect();
    let grads_at = |weights: &model::WeightMap, b| -> BTreeMap<String, Vec<f64>> {
        let mut w = weights.clone();
        let vars: Vec<Var> = names
            .iter()
            .map(|n| Var::from_tensor(&weights[n]).unwrap())
            .collect();
        for (n, v) in names.iter().zip(&vars) {
            w.insert(n.clone(), v.as_tensor().clone());
        }
        let grads = common::loss_of(&pretrained, &w, b, Mode::Training)
            .backward()
            .unwrap();
        names
            .iter()
            .zip(&vars)
            .map(|(n, v)| {
                let g: Vec<f32> = match grads.get(v.as_tensor()) {
                    Some(g) => g.flatten_all().unwrap().to_vec1().unwrap(),
                    None => vec![0.0; v.elem_count()],
                };
                (n.clone(), g.into_iter().map(f64::from).collect())
            })
            .collect()
    };
    let flat = |t: &Tensor| -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let eps = 1e-8;
    // Step 1: m̂ = g1, v̂ = g1², so θ' = θ1 − lr · g1 / (|g1| + ε).
    let g1 = grads_at(&pretrained.weights, &batches[0]);
    let mut step1 = pretrained.weights.clone();
    for n in &names {
        let w = flat(&pretrained.weights[n]);
        let new: Vec<f32> = w
            .iter()
            .zip(&g1[n])
            .map(|(w, g)| (w - lr * g / (g.abs() + eps)) as f32)
            .collect();
        step1.insert(
            n.clone(),
            Tensor::from_vec(new, pretrained.weights[n].shape(), &Device::Cpu).unwrap(),
        );
    }
    // Step 2: m = 0.09 g1 + 0.1 g2, v = 0.000999 g1² + 0.001 g2², corrected by 1 − 0.9² and 1 − 0.999².
    let g2 = grads_at(&step1, &batches[1]);
    for name in &targets {
        let w1 = flat(&pretrained.weights[name]);
        let wp = flat(&step1[name]);
        let moved: Vec<f64> = (0..w1.len())
            .map(|i| {
                let (a, b) = (g1[name][i], g2[name][i]);
                let m = (0.09 * a + 0.1 * b) / (1.0 - 0.81);
                let v = (0.999 * 0.001 * a * a + 0.001 * b * b) / (1.0 - 0.999f64.powi(2));
                (wp[i] - lr * m / (v.sqrt() + eps) - w1[i]).abs()
            })
            .collect();
        let rule: Vec<f64> = theta_t[name]
            .iter()
            .zip(&w1)
            .map(|(t, w)| (f64::from(*t) - w).abs())
            .collect();
        // Where |g| is near ε, AdamW's g/(|g| + ε) turns float-rounding differences between the
        // two gradient computations into visible ones: allow a few such entries in 10⁴.
        let diffs: Vec<f64> = moved
            .iter()
            .zip(&rule)
            .map(|(a, b)| (a - b).abs())
            .collect();
        // (Most entries agree to float rounding; 1e-3 · lr is 0.05 % of a typical move.)
        let off = diffs.iter().filter(|&&d| d > 1e-3 * lr).count();
        let worst = diffs.iter().copied().fold(0.0, f64::max);
        let close = diffs.iter().filter(|&&d| d <= 1e-8).count();
        eprintln!(
            "{name}: {off} of {} entries off by > 1e-3 lr, {close} within 1e-8, worst {worst:e}",
            diffs.len()
        );
        assert!(
            off * 10_000 < diffs.len() * 5,
            "{name}: {off} entries off, worst {worst}"
        );
        assert!(
            close * 10 > diffs.len() * 9,
            "{name}: only {close} entries agree to 1e-8"
        );
        assert!(
            worst < 0.01 * lr,
            "{name}: warm-up differs from the hand AdamW by {worst}"
        );
        // Its mask: the 147 (0.1 %) entries that moved most by the hand computation, up to
        // entries within the tolerance of the 147th.
        let k = budget::budget(0.001, w1.len());
        let mut sorted = moved.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[k - 1];
        let scores = score::movement_scores(
            &BTreeMap::from([(name.clone(), w1.iter().map(|&x| x as f32).collect())]),
            &BTreeMap::from([(name.clone(), theta_t[name].clone())]),
        )
        .unwrap();
        let mask = &budget::select_by_score(&scores, 0.001, Selection::PerTensor)[name];
        assert_eq!(mask.len(), k);
        for &i in mask {
            assert!(
                moved[i as usize] >= kth - 2e-6,
                "{name}[{i}] moved {} < {kth}",
                moved[i as usize]
            );
        }
        // The warm-up moved things: the top entries moved about 2 · lr, far more than most.
        assert!(
            sorted[0] > 1.5 * lr && sorted[sorted.len() / 2] < sorted[0],
            "{sorted:?}"
        );
    }
}

#[test]
fn a_reselection_plan_drops_and_regrows_the_hand_worked_entries() {
    // a: 8 entries, mask [0, 2, 4, 5], Δ = [0.5, −0.01, 0.2, −0.03];
    //    accumulated Σg = [9, 0.1, 9, −0.7, 9, 9, 0.3, −0.05] (the selected 9s cannot regrow).
    // b: 4 entries, mask [1, 3], Δ = [0.001, 0.002]; Σg = [2, 9, −0.2, 9].
    let selected = map(&[("a", vec![0u32, 2, 4, 5]), ("b", vec![1, 3])]);
    let delta = map(&[
        ("a", vec![0.5f32, -0.01, 0.2, -0.03]),
        ("b", vec![0.001, 0.002]),
    ]);
    let acc = map(&[
        ("a", vec![9.0f32, 0.1, 9.0, -0.7, 9.0, 9.0, 0.3, -0.05]),
        ("b", vec![2.0, 9.0, -0.2, 9.0]),
    ]);
    // Per tensor, F = 0.5: a drops 2 (smallest |Δ|: 0.01 at 2, 0.03 at 5) and regrows its 2
    // largest |Σg| outside the mask (0.7 at 3, 0.3 at 6); b drops 1 (0.001 at 1), regrows 0 (2).
    let p = reselect::plan(&selected, &delta, &acc, 0.5, Selection::PerTensor).unwrap();
    assert_eq!(p.dropped, map(&[("a", vec![2u32, 5]), ("b", vec![1])]));
    assert_eq!(p.regrown, map(&[("a", vec![3u32, 6]), ("b", vec![0])]));
    let new = p.apply(&selected);
    assert_eq!(new, map(&[("a", vec![0u32, 3, 4, 6]), ("b", vec![0, 3])]));
    // Globally, ⌊0.5 · 6⌋ = 3: the 3 smallest |Δ| of all (b1 0.001, b3 0.002, a2 0.01) go, and
    // the 3 largest |Σg| outside the masks (b0 2, a3 0.7, a6 0.3) come: a grows to 5, b to 1.
    let p = reselect::plan(&selected, &delta, &acc, 0.5, Selection::Global).unwrap();
    assert_eq!(p.dropped, map(&[("a", vec![2u32]), ("b", vec![1, 3])]));
    assert_eq!(p.regrown, map(&[("a", vec![3u32, 6]), ("b", vec![0])]));
    let new = p.apply(&selected);
    assert_eq!(new, map(&[("a", vec![0u32, 3, 4, 5, 6]), ("b", vec![0])]));
    assert_eq!(new.values().map(Vec::len).sum::<usize>(), 6);
    // F = 0.1 of 4 entries is ⌊0.4⌋ = 0: nothing moves.
    let p = reselect::plan(&selected, &delta, &acc, 0.1, Selection::PerTensor).unwrap();
    assert!(p
        .dropped
        .values()
        .chain(p.regrown.values())
        .all(Vec::is_empty));
}

/// On the real model: after a due step the mask moves as planned, kept entries keep Δ and their
/// AdamW moments, regrown ones start at Δ = 0 with zero moments, dropped ones are θ1 again.
#[test]
fn reselection_moves_the_mask_values_and_optimizer_state_of_a_real_run() {
    let pretrained = common::pretrained(2);
    let head = model::weights::head_names(&pretrained.config, 2).unwrap();
    let (q, v) = (
        "encoder.layer.0.attention.self.query.weight".to_string(),
        "encoder.layer.2.attention.self.value.weight".to_string(),
    );
    let selected = map(&[
        (q.as_str(), vec![10u32, 20, 30, 40]),
        (v.as_str(), vec![5, 6]),
    ]);
    let mut method =
        FineTuning::sparse(MethodKind::Sift, &pretrained.weights, &head, &selected).unwrap();
    let set = |method: &FineTuning, name: &str, values: &[f32]| {
        let p = method
            .params()
            .unwrap()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap();
        p.var
            .set(&Tensor::new(values, &Device::Cpu).unwrap())
            .unwrap();
    };
    set(&method, &format!("{q}.delta"), &[0.5, -0.01, 0.2, -0.03]);
    set(&method, &format!("{v}.delta"), &[0.004, 0.3]);
    let adamw = AdamWConfig::default();
    let mut optimizer = AdamW::new(method.params().unwrap(), adamw).unwrap();
    let moments = |scale: f32| -> Vec<Tensor> {
        optimizer_names(&optimizer)
            .iter()
            .zip(optimizer.params())
            .map(|(name, p)| {
                if name == &format!("{q}.delta") {
                    Tensor::new(&[1.0f32, 2.0, 3.0, 4.0], &Device::Cpu).unwrap() * scale as f64
                } else if name == &format!("{v}.delta") {
                    Tensor::new(&[5.0f32, 6.0], &Device::Cpu).unwrap() * scale as f64
                } else {
                    p.var.ones_like()
                }
                .unwrap()
            })
            .collect()
    };
    let (first, second) = (moments(1.0), moments(10.0));
    optimizer.restore(first, second, 7).unwrap();
    let settings = ReselectSettings {
        every: 5,
        fraction: 0.5,
        selection: Selection::PerTensor,
        adamw,
    };
    let mut r = Reselection::start(settings, &method, &pretrained.weights, None).unwrap();
    let mut g = vec![0f32; 147_456];
    g[100] = 5.0;
    g[200] = -3.0;
    g[300] = 1.0;
    g[10] = 50.0; // selected: cannot be regrown
    r.add_gradient(&q, &g).unwrap();
    let mut g = vec![0f32; 147_456];
    g[7] = -0.5;
    r.add_gradient(&v, &g).unwrap();
    // Step 3 is not due: nothing moves.
    r.after_step(3, &mut method, &mut optimizer).unwrap();
    assert_eq!(method.selected_indices().unwrap(), selected);
    r.after_step(5, &mut method, &mut optimizer).unwrap();
    // q: drop 20 (|Δ| 0.01) and 40 (0.03), regrow 100 and 200; v: drop 5 (0.004), regrow 7.
    let now = method.selected_indices().unwrap();
    assert_eq!(now[&q], vec![10, 30, 100, 200]);
    assert_eq!(now[&v], vec![6, 7]);
    let values = method.sparse_values().unwrap();
    assert_eq!(values[&q], vec![0.5, 0.2, 0.0, 0.0]);
    assert_eq!(values[&v], vec![0.3, 0.0]);
    let (m, s, steps) = optimizer.state().unwrap();
    assert_eq!(steps, 7);
    let names = optimizer_names(&optimizer);
    let at = |ts: &[Tensor], name: String| -> Vec<f32> {
        ts[names.iter().position(|n| *n == name).unwrap()]
            .to_vec1()
            .unwrap()
    };
    assert_eq!(at(&m, format!("{q}.delta")), vec![1.0, 3.0, 0.0, 0.0]);
    assert_eq!(at(&s, format!("{q}.delta")), vec![10.0, 30.0, 0.0, 0.0]);
    assert_eq!(at(&m, format!("{v}.delta")), vec![6.0, 0.0]);
    // The head's moments are untouched.
    assert_eq!(at(&m, "classifier.bias".into()), vec![1.0, 1.0]);
    // The optimizer updates the new values: one step moves the regrown entries off zero.
    let grads: Vec<Tensor> = optimizer
        .params()
        .iter()
        .map(|p| p.var.ones_like().unwrap())
        .collect();
    optimizer.step(&grads, 1e-3).unwrap();
    assert!(method.sparse_values().unwrap()[&q][2] != 0.0);
    // Dropped entries are θ1 again; kept ones θ1 + Δ.
    let merged = method.merged().unwrap();
    let w1: Vec<f32> = pretrained.weights[&q]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let w: Vec<f32> = merged[&q].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(w[20], w1[20]);
    assert_eq!(w[40], w1[40]);
    assert_ne!(w[10], w1[10]);
    // The log: one row per tensor, the budget kept.
    assert_eq!(r.log.len(), 2);
    let row_q = r.log.iter().find(|row| row.tensor == q).unwrap();
    assert_eq!((row_q.step, row_q.selected), (5, 4));
    assert_eq!(row_q.dropped, vec![20, 40]);
    assert_eq!(row_q.regrown, vec![100, 200]);
    assert_eq!(row_q.kept_from_initial, 2);
}

fn optimizer_names(optimizer: &AdamW) -> Vec<String> {
    optimizer.params().iter().map(|p| p.name.clone()).collect()
}

/// A short RTE run's flags; a flag in `extra` replaces the default of the same name.
fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let defaults = [
        ("--train-limit", "48"),
        ("--eval-limit", "16"),
        ("--batch-size", "8"),
        ("--max-len", "48"),
        ("--epochs", "2"),
        ("--lr", "5e-3"),
        ("--rate", "0.01"),
        ("--modules", "q,v"),
        ("--log-every", "1"),
    ];
    let mut args: Vec<String> = ["--threads", "1", "train", "--task", "rte"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    args.push("--data-dir".into());
    args.push(common::glue_dir().display().to_string());
    args.push("--out".into());
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn delta_of(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let tensors =
        model::weights::read_safetensors(&dir.join("delta.safetensors"), &Device::Cpu).unwrap();
    tensors
        .into_iter()
        .map(|(n, t)| {
            let v: Vec<f32> = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (n, v)
        })
        .collect()
}

/// A run with reselection every 4 steps (6 steps an epoch, so one falls inside epoch 2 with
/// gradients accumulated across the epoch boundary), interrupted after epoch 1 and resumed,
/// ends exactly where the uninterrupted run ends: masks, values and the reselection log.
#[test]
fn reselection_keeps_the_budget_and_resume_equals_an_uninterrupted_run() {
    let tmp = common::temp_dir("reselect");
    let whole = tmp.path().join("whole");
    let extra = ["--reselect-every", "4", "--reselect-fraction", "0.25"];
    run_ok(sift_lab().args(train_args(&whole, &extra)));
    let log = sift_lab::output::read_parquet(&whole.join(reselect::SELECTION_FILE)).unwrap();
    // 12 steps: reselections after steps 4, 8 and 12, on 12 tensors each.
    let steps = sift_lab::output::column::u32s(&log, "step").unwrap();
    assert_eq!(steps.len(), 36);
    assert_eq!(steps.iter().filter(|&&s| s == 8).count(), 12);
    let selected = sift_lab::output::column::u32s(&log, "selected").unwrap();
    let dropped = sift_lab::output::column::u32s(&log, "dropped").unwrap();
    let regrown = sift_lab::output::column::u32s(&log, "regrown").unwrap();
    // k = ⌊0.01 · 147,456⌋ = 1,474 per tensor; ⌊0.25 · 1,474⌋ = 368 dropped and regrown.
    assert!(selected.iter().all(|&k| k == 1474), "{selected:?}");
    assert!(dropped.iter().all(|&d| d == 368), "{dropped:?}");
    assert_eq!(dropped, regrown);
    let kept = sift_lab::output::column::u32s(&log, "kept_from_initial").unwrap();
    assert!(kept.iter().all(|&k| k < 1474) && kept.iter().any(|&k| k <= 1474 - 368));

    // Interrupted (Ctrl-C) once epoch 1 is checkpointed, then resumed.
    let cut = tmp.path().join("cut");
    let mut child = sift_lab().args(train_args(&cut, &extra)).spawn().unwrap();
    let checkpoint = cut.join("state/checkpoint.json");
    while !checkpoint.exists() {
        if child.try_wait().unwrap().is_some() {
            panic!("the run ended before its first checkpoint");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "the run was not interrupted in epoch 2"
    );
    let text = std::fs::read_to_string(&checkpoint).unwrap();
    assert!(text.contains("\"epochs_completed\":1"), "{text}");
    let mut resume = train_args(&cut, &extra);
    resume.push("--resume".into());
    run_ok(sift_lab().args(resume));

    let (a, b) = (delta_of(&whole), delta_of(&cut));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, va) in &a {
        let vb = &b[name];
        if name.ends_with(".indices") {
            assert_eq!(va, vb, "{name}");
        } else {
            let worst = va
                .iter()
                .zip(vb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-6, "{name}: {worst}");
        }
    }
    let log_b = sift_lab::output::read_parquet(&cut.join(reselect::SELECTION_FILE)).unwrap();
    let cols = [
        "step",
        "tensor",
        "dropped",
        "regrown",
        "kept_from_initial",
        "dropped_indices",
        "regrown_indices",
    ];
    assert!(log
        .select(cols)
        .unwrap()
        .equals(&log_b.select(cols).unwrap()));
    // The masks moved: the final delta's indices are not the first run's initial mask.
    let initial_kept = sift_lab::output::column::u32s(&log_b, "kept_from_initial").unwrap();
    assert!(initial_kept.iter().rev().take(12).all(|&k| k < 1474));
}

/// `--method random` is `--method sift --selector random`: the same entries.
#[test]
fn method_random_is_selector_random() {
    let tmp = common::temp_dir("random-rule");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_ok(sift_lab().args(train_args(&a, &["--method", "random"])));
    run_ok(sift_lab().args(train_args(
        &b,
        &["--method", "sift", "--selector", "random"],
    )));
    let (da, db) = (delta_of(&a), delta_of(&b));
    let indices: Vec<&String> = da.keys().filter(|n| n.ends_with(".indices")).collect();
    assert_eq!(indices.len(), 12);
    for n in indices {
        assert_eq!(da[n], db[n], "{n}");
    }
    // A rule with a method that has none is refused, naming the flag.
    let err = common::run_err(sift_lab().args(train_args(
        &tmp.path().join("c"),
        &["--method", "lora", "--selector", "fisher"],
    )));
    assert!(err.contains("--selector fisher"), "{err}");
}

#[test]
fn the_quick_selectors_grid_runs_end_to_end_with_a_selector_column() {
    let tmp = common::temp_dir("selectors-quick");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tmp.path().join("grid");
    let stdout = run_ok(
        sift_lab()
            .args(["--threads", "2", "ablate"])
            .arg(root.join("analyses/selectors.toml"))
            .args(["--preset", "quick", "--out"])
            .arg(&out),
    );
    assert!(stdout.contains("0 diverged"), "{stdout}");
    let df = sift_lab::output::read_parquet(&out.join("results.parquet")).unwrap();
    let rules = sift_lab::output::column::strings(&df, "selector").unwrap();
    let mut sorted = rules.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            "fisher",
            "gradient",
            "magnitude-largest",
            "magnitude-smallest",
            "movement",
            "random"
        ]
    );
    let ids = sift_lab::output::column::strings(&df, "cell_id").unwrap();
    for (id, rule) in ids.iter().zip(&rules) {
        // Only rules other than the paper's name themselves in the id.
        assert_eq!(id.contains(",selector="), rule != "gradient", "{id}");
        if rule != "gradient" {
            assert!(id.contains(&format!(",selector={rule},")), "{id}");
        }
    }
    // Every cell trained 35,376 entries (1 % of each q, k, v, o).
    let achieved = sift_lab::output::column::u64s(&df, "achieved_budget").unwrap();
    assert!(achieved.iter().all(|&a| a == 35_376), "{achieved:?}");
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(
        table.contains("movement") && table.contains("| selector |"),
        "{table}"
    );
}

/// `masks` on MiniLM (1 % of q, k, v, o: 24 × 1,474 = 35,376 entries): a rule against itself
/// overlaps in all k; fisher equals gradient at s = 1 (g² orders like |g|); random against any
/// rule is near chance, 24 · 1,474² / 147,456 = 353.6 (sd ≈ 18.6).
#[test]
fn masks_overlap_is_k_with_itself_and_chance_for_random() {
    let tmp = common::temp_dir("masks");
    let out = tmp.path().join("masks");
    let stdout = run_ok(
        sift_lab()
            .args([
                "--threads",
                "2",
                "masks",
                "--task",
                "mrpc",
                "--train-limit",
                "32",
                "--batch-size",
                "8",
            ])
            .args(["--max-len", "48", "--movement-steps", "2", "--data-dir"])
            .arg(common::glue_dir())
            .arg("--out")
            .arg(&out),
    );
    assert!(stdout.contains("| gradient | 35376 | 35376 |"), "{stdout}");
    let df = sift_lab::output::read_parquet(&out.join("mask-overlap.parquet")).unwrap();
    let a = sift_lab::output::column::strings(&df, "rule_a").unwrap();
    let b = sift_lab::output::column::strings(&df, "rule_b").unwrap();
    let tensor = sift_lab::output::column::strings(&df, "tensor").unwrap();
    let overlap = sift_lab::output::column::u64s(&df, "overlap").unwrap();
    let chance = sift_lab::output::column::f64s(&df, "chance").unwrap();
    let pooled = |x: &str, y: &str| {
        (0..a.len())
            .find(|&i| tensor[i] == "all" && ((a[i] == x && b[i] == y) || (a[i] == y && b[i] == x)))
            .map(|i| (overlap[i], chance[i]))
            .unwrap_or_else(|| panic!("no pooled row {x} × {y}"))
    };
    // 21 pairs (6 rules, with themselves) × (24 tensors + all).
    assert_eq!(a.len(), 21 * 25);
    for rule in [
        "gradient",
        "fisher",
        "magnitude-largest",
        "magnitude-smallest",
        "movement",
        "random",
    ] {
        assert_eq!(pooled(rule, rule).0, 35_376, "{rule}");
    }
    assert_eq!(pooled("gradient", "fisher").0, 35_376);
    let expected = 24.0 * 1474.0f64.powi(2) / 147_456.0;
    for rule in [
        "gradient",
        "fisher",
        "magnitude-largest",
        "magnitude-smallest",
        "movement",
    ] {
        let (o, c) = pooled("random", rule);
        assert!((c - expected).abs() < 1e-6, "{c}");
        assert!(
            (o as f64 - expected).abs() < 5.0 * 18.6,
            "random × {rule}: {o}"
        );
    }
    // Largest and smallest |W| never share an entry.
    assert_eq!(pooled("magnitude-largest", "magnitude-smallest").0, 0);
    // Refuses to overwrite.
    let err = common::run_err(
        sift_lab()
            .args([
                "masks",
                "--task",
                "mrpc",
                "--rules",
                "gradient",
                "--data-dir",
            ])
            .arg(common::glue_dir())
            .arg("--out")
            .arg(&out),
    );
    assert!(err.contains("already exists"), "{err}");
}

/// analyses/selectors.toml: every preset expands to every rule at budgets it buys exactly
/// (0.1 %, 1 %, 5 % of each of the 24 W_q,k,v,o: 24 × 147, 24 × 1,474, 24 × 7,372).
#[test]
fn the_selectors_config_expands_to_every_rule_at_exact_budgets() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("analyses/selectors.toml");
    for (preset, cells) in [
        ("quick", 6),
        ("cpu", 6 * 3 * 2 * 2),
        ("paper", 6 * 3 * 2 * 3),
    ] {
        let config = sift_lab::ablate::config::load(&path, Some(preset)).unwrap();
        let grid = sift_lab::ablate::cells::expand(&config).unwrap();
        assert_eq!(grid.cells.len(), cells, "{preset}");
        for cell in &grid.cells {
            assert_eq!(Some(cell.achieved), cell.budget, "{preset}: {cell:?}");
        }
        let rules: std::collections::BTreeSet<Selector> =
            grid.cells.iter().map(|c| c.selector).collect();
        assert_eq!(rules.len(), 6, "{preset}");
    }
    assert_eq!(3528, 24 * 147);
    assert_eq!(176_928, 24 * 7372);
}

/// The committed Table 4 grid (written before the selectors axis existed) stays valid: its
/// stored configuration equals today's parse of the config, every stored cell is a cell of
/// today's grid under the same id, and each cell's train config equals the one in its summary.
#[test]
fn committed_table4_results_keep_their_ids_and_configuration() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("results/table4-modules");
    let stored = sift_lab::ablate::results::read(&dir.join("results.parquet")).unwrap();
    let mut config =
        sift_lab::ablate::config::load(&root.join("analyses/table4-modules.toml"), Some("cpu"))
            .unwrap();
    config.random = true;
    sift_lab::grid::check_same_config(&dir, &stored.config, &config).unwrap();
    let grid = sift_lab::ablate::cells::expand(&config).unwrap();
    let ids: std::collections::BTreeSet<String> =
        grid.cells.iter().map(sift_lab::grid::Cell::id).collect();
    assert!(stored.rows.len() >= 90, "{}", stored.rows.len());
    let data_dir = common::glue_dir();
    let mut compared = 0;
    for row in &stored.rows {
        let id = sift_lab::grid::Cell::id(row);
        assert!(ids.contains(&id) && !id.contains("selector"), "{id}");
        let summary = dir
            .join("cells")
            .join(row.cell.dir_name())
            .join("summary.json");
        if let Ok(text) = std::fs::read_to_string(&summary) {
            let s: sift_lab::train::TrainSummary = serde_json::from_str(&text).unwrap();
            let mut now = row.cell.train_config(&config, &data_dir);
            now.data_dir = s.config.data_dir.clone();
            now.model = s.config.model.clone();
            assert_eq!(s.config, now, "{id}");
            compared += 1;
        }
    }
    assert_eq!(compared, stored.rows.len());
}

/// Bad selector and reselection flags are refused before any work, naming the flag.
#[test]
fn bad_selector_flags_name_the_flag() {
    let tmp = common::temp_dir("selector-flags");
    let cases: [(&[&str], &str); 6] = [
        (
            &["--method", "full", "--selector", "movement"],
            "--selector movement",
        ),
        (
            &["--method", "random", "--selector", "fisher"],
            "--method random is --selector random",
        ),
        (
            &["--selector", "movement", "--movement-steps", "0"],
            "--movement-steps 0",
        ),
        (&["--reselect-every", "0"], "--reselect-every 0"),
        (
            &["--reselect-every", "5", "--reselect-fraction", "1.5"],
            "--reselect-fraction 1.5",
        ),
        (
            &["--method", "lora", "--reselect-every", "5"],
            "--reselect-every",
        ),
    ];
    for (i, (extra, says)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("run{i}"));
        let err = common::run_err(sift_lab().args(train_args(&out, extra)));
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(!out.join("summary.json").exists());
    }
    // Reselection needs weight matrices: a bias target is refused, naming it.
    let out = tmp.path().join("bias");
    let err = common::run_err(sift_lab().args(train_args(
        &out,
        &[
            "--modules",
            "attention",
            "--reselect-every",
            "5",
            "--train-limit",
            "8",
        ],
    )));
    assert!(
        err.contains("not a linear weight") && err.contains("bias"),
        "{err}"
    );
    let err = common::run_err(
        sift_lab()
            .args([
                "train",
                "--instructions",
                "x.json",
                "--selector",
                "fisher",
                "--out",
            ])
            .arg(tmp.path().join("lm")),
    );
    assert!(err.contains("--instructions"), "{err}");
    let err = common::run_err(
        sift_lab()
            .args(["masks", "--task", "mrpc", "--batches", "0", "--out"])
            .arg(tmp.path().join("m")),
    );
    assert!(err.contains("--batches 0"), "{err}");
}
