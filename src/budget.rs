//! Budgets and top-k, in one place: how many entries of a tensor a rate buys, which entries
//! are the largest, and how SIFT and the random baseline spend a budget over several tensors.
//! SIFT's training, grad-stats' "the set SIFT would train" and budget matching all use these.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How a budget is spread over the targeted tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// k = max(1, ⌊rate · numel⌋) entries of each targeted tensor.
    PerTensor,
    /// The same total budget, spent on the largest |G| across all targeted tensors together.
    Global,
}

/// SIFT's budget for one tensor: k = max(1, ⌊rate · numel⌋) (SPEC, "SIFT"), at most numel.
/// The product is nudged up by a relative 1e-12 before flooring, so that a rate that buys a
/// whole number of entries gets it despite rounding (0.29 · 100 = 28.999999999999996 → 29).
pub fn budget(rate: f64, numel: usize) -> usize {
    if numel == 0 {
        return 0;
    }
    let exact = rate * numel as f64;
    ((exact * (1.0 + 1e-12)).floor() as usize).clamp(1, numel)
}

/// Flat indices (ascending) of the k entries of largest |g|; ties go to the lower index, and
/// NaN counts as the smallest magnitude.
pub fn top_k_indices(g: &[f32], k: usize) -> Vec<u32> {
    top_k_by_key(g, k, magnitude_order)
}

/// Flat indices (ascending) of the k entries of largest score (signed: −3 ranks below 1); ties
/// go to the lower index, and NaN ranks lowest. A rule that wants the smallest values scores −x.
pub fn top_k_by_score(scores: &[f32], k: usize) -> Vec<u32> {
    top_k_by_key(scores, k, signed_order)
}

fn top_k_by_key(g: &[f32], k: usize, order: fn(f32) -> u32) -> Vec<u32> {
    let k = k.min(g.len());
    if k == 0 {
        return Vec::new();
    }
    assert!(
        g.len() <= u32::MAX as usize,
        "tensor too long for u32 indices"
    );
    let mut indices: Vec<u32> = (0..g.len() as u32).collect();
    let key = |i: &u32| (std::cmp::Reverse(order(g[*i as usize])), *i);
    if k < indices.len() {
        indices.select_nth_unstable_by_key(k - 1, key);
        indices.truncate(k);
    }
    indices.sort_unstable();
    indices
}

/// A total order on |x| for f32 (NaN lowest): the bit pattern of |x| orders like its value.
fn magnitude_order(x: f32) -> u32 {
    if x.is_nan() {
        0
    } else {
        x.abs().to_bits()
    }
}

/// A total order on signed x for f32 (NaN lowest, then −∞ … +∞; −0 and +0 are equal).
fn signed_order(x: f32) -> u32 {
    if x.is_nan() {
        0
    } else {
        let bits = (x + 0.0).to_bits();
        // Negative numbers order by reversed magnitude below the positive ones; +1 keeps the
        // most negative value above NaN's 0.
        if bits & 0x8000_0000 != 0 {
            (!bits).max(1)
        } else {
            bits | 0x8000_0000
        }
    }
}

/// SIFT's selection from accumulated gradients (top-k |G|): per tensor, or globally with the
/// same total.
pub fn select_by_gradient(
    gradients: &BTreeMap<String, Vec<f32>>,
    rate: f64,
    selection: Selection,
) -> BTreeMap<String, Vec<u32>> {
    select_by_key(gradients, rate, selection, magnitude_order)
}

/// Every selection rule's top-k (`crate::selectors`): the k entries of largest score per tensor,
/// or the same total of largest scores over all tensors together. Scores are signed (see
/// [`top_k_by_score`]).
pub fn select_by_score(
    scores: &BTreeMap<String, Vec<f32>>,
    rate: f64,
    selection: Selection,
) -> BTreeMap<String, Vec<u32>> {
    select_by_key(scores, rate, selection, signed_order)
}

/// The `total` entries of largest score over all tensors together (ties: the earlier tensor in
/// name order, then the lower index), as ascending flat indices per tensor.
pub fn global_top_by_score(
    scores: &BTreeMap<String, Vec<f32>>,
    total: usize,
) -> BTreeMap<String, Vec<u32>> {
    global_top_by_key(scores, total, signed_order)
}

fn select_by_key(
    gradients: &BTreeMap<String, Vec<f32>>,
    rate: f64,
    selection: Selection,
    order: fn(f32) -> u32,
) -> BTreeMap<String, Vec<u32>> {
    match selection {
        Selection::PerTensor => gradients
            .iter()
            .map(|(name, g)| (name.clone(), top_k_by_key(g, budget(rate, g.len()), order)))
            .collect(),
        Selection::Global => {
            let total: usize = gradients.values().map(|g| budget(rate, g.len())).sum();
            global_top_by_key(gradients, total, order)
        }
    }
}

fn global_top_by_key(
    gradients: &BTreeMap<String, Vec<f32>>,
    total: usize,
    order: fn(f32) -> u32,
) -> BTreeMap<String, Vec<u32>> {
    // One pool over all tensors; each entry remembers its tensor.
    let names: Vec<&String> = gradients.keys().collect();
    let mut pool: Vec<(u32, u32, u32)> = Vec::new();
    for (t, g) in gradients.values().enumerate() {
        pool.extend(
            g.iter()
                .enumerate()
                .map(|(i, v)| (order(*v), t as u32, i as u32)),
        );
    }
    let mut chosen: BTreeMap<String, Vec<u32>> =
        names.iter().map(|n| ((*n).clone(), Vec::new())).collect();
    let total = total.min(pool.len());
    if total == 0 {
        return chosen;
    }
    pool.select_nth_unstable_by_key(total - 1, |&(m, t, i)| (std::cmp::Reverse(m), t, i));
    for &(_, t, i) in &pool[..total] {
        chosen.get_mut(names[t as usize]).unwrap().push(i);
    }
    chosen.values_mut().for_each(|v| v.sort_unstable());
    chosen
}

/// The random baseline: k indices per tensor drawn uniformly without replacement, from the
/// seed's stream for that tensor name (so the draw does not depend on which tensors are targeted).
pub fn select_random(
    shapes: &[(String, Vec<usize>)],
    rate: f64,
    seed: u64,
) -> BTreeMap<String, Vec<u32>> {
    shapes
        .iter()
        .map(|(name, shape)| {
            let numel: usize = shape.iter().product();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            }));
            let mut indices: Vec<u32> =
                rand::seq::index::sample(&mut rng, numel, budget(rate, numel))
                    .into_iter()
                    .map(|i| i as u32)
                    .collect();
            indices.sort_unstable();
            (name.clone(), indices)
        })
        .collect()
}

/// A rate or rank chosen to meet a target count of trainable parameters, and the count it buys.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Matched {
    /// SIFT/random: the rate; LoRA: the rank (as a number).
    pub setting: f64,
    /// Trainable entries it buys (never counting the task head).
    pub count: usize,
}

/// Entries a sparse method trains at `rate` over tensors of these sizes: Σ max(1, ⌊rate·n⌋).
/// Global selection spends the same total, so this holds for both selections.
pub fn sparse_count(numels: &[usize], rate: f64) -> usize {
    numels.iter().map(|&n| budget(rate, n)).sum()
}

/// The rate whose [`sparse_count`] is closest to `target` (ties: the larger count). The count is
/// a step function of the rate, rising only where some ⌊rate·n⌋ steps, so the candidates are
/// the smallest rate that reaches `target` and the largest that stays below it (bisection on
/// the rate, to the last bit). The rate returned buys exactly the count returned.
pub fn match_sparse_rate(numels: &[usize], target: usize) -> Matched {
    let total: usize = numels.iter().sum();
    let (mut below, mut reach) = (0.0f64, 1.0f64);
    if sparse_count(numels, reach) < target || total == 0 {
        return Matched {
            setting: 1.0,
            count: sparse_count(numels, 1.0),
        };
    }
    // Invariant: count(below) < target (or below = 0) and count(reach) >= target.
    for _ in 0..200 {
        let mid = 0.5 * (below + reach);
        if mid <= below || mid >= reach {
            break;
        }
        if sparse_count(numels, mid) >= target {
            reach = mid;
        } else {
            below = mid;
        }
    }
    let up = sparse_count(numels, reach);
    let down = (below > 0.0).then(|| sparse_count(numels, below));
    match down {
        Some(d) if target - d < up - target => Matched {
            setting: below,
            count: d,
        },
        _ => Matched {
            setting: reach,
            count: up,
        },
    }
}

/// LoRA's trainable count at rank r on matrices of these (rows, columns): r · Σ (m + n).
pub fn lora_count(shapes: &[(usize, usize)], rank: usize) -> usize {
    rank * shapes.iter().map(|(m, n)| m + n).sum::<usize>()
}

/// The rank (at least 1) whose [`lora_count`] is closest to `target` (ties: the larger rank).
pub fn match_lora_rank(shapes: &[(usize, usize)], target: usize) -> Matched {
    let per_rank = lora_count(shapes, 1).max(1);
    let low = (target / per_rank).max(1);
    let rank = if target.abs_diff(lora_count(shapes, low + 1))
        <= target.abs_diff(lora_count(shapes, low))
    {
        low + 1
    } else {
        low
    };
    Matched {
        setting: rank as f64,
        count: lora_count(shapes, rank),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_floors_rate_times_numel_with_at_least_one() {
        assert_eq!(budget(0.01, 147_456), 1474); // 1474.56
        assert_eq!(budget(0.01, 300), 3);
        assert_eq!(budget(0.07, 100), 7); // 7.000000000000001
        assert_eq!(budget(0.29, 100), 29); // 28.999999999999996 in f64
        assert_eq!(budget(0.57, 100), 57); // 56.99999999999999
        assert_eq!(budget(1e-9, 10), 1);
        assert_eq!(budget(1.0, 10), 10);
        assert_eq!(budget(2.0, 10), 10);
        assert_eq!(budget(0.5, 0), 0);
        // Every whole-percent rate of 100 entries buys exactly that many.
        for p in 1..=100 {
            assert_eq!(budget(p as f64 / 100.0, 100), p, "{p} %");
        }
    }

    #[test]
    fn top_k_takes_the_largest_magnitudes_and_breaks_ties_by_index() {
        let g = [0.1, -5.0, 3.0, -3.0, 0.0, 4.0];
        assert_eq!(top_k_indices(&g, 1), vec![1]);
        assert_eq!(top_k_indices(&g, 3), vec![1, 2, 5]);
        // |3.0| = |−3.0|: the lower index wins the last place.
        assert_eq!(top_k_indices(&g, 4), vec![1, 2, 3, 5]);
        assert_eq!(top_k_indices(&g, 10), vec![0, 1, 2, 3, 4, 5]);
        assert!(top_k_indices(&g, 0).is_empty());
        assert_eq!(top_k_indices(&[f32::NAN, 1.0, -2.0], 2), vec![1, 2]);
    }

    #[test]
    fn score_top_k_is_signed_with_nan_lowest() {
        let s = [0.5, -7.0, 3.0, f32::NAN, -0.0, 0.0, f32::NEG_INFINITY, -1.0];
        // Largest first: 3.0 (2), 0.5 (0), then ±0 (4, 5: equal, lower index first).
        assert_eq!(top_k_by_score(&s, 1), vec![2]);
        assert_eq!(top_k_by_score(&s, 3), vec![0, 2, 4]);
        assert_eq!(top_k_by_score(&s, 4), vec![0, 2, 4, 5]);
        // Then −1 (7), −7 (1), −∞ (6); NaN (3) last.
        assert_eq!(top_k_by_score(&s, 5), vec![0, 2, 4, 5, 7]);
        assert_eq!(top_k_by_score(&s, 7), vec![0, 1, 2, 4, 5, 6, 7]);
        // The smallest |x| through −|x|.
        let w = [0.3f32, -0.1, 2.0, -0.05];
        let neg: Vec<f32> = w.iter().map(|x| -x.abs()).collect();
        assert_eq!(top_k_by_score(&neg, 2), vec![1, 3]);
        // On magnitudes, the score top-k is SIFT's top-k.
        let g = [0.1f32, -5.0, 3.0, -3.0, 0.0, 4.0];
        let abs: Vec<f32> = g.iter().map(|x| x.abs()).collect();
        for k in 0..=6 {
            assert_eq!(top_k_by_score(&abs, k), top_k_indices(&g, k), "k = {k}");
        }
    }

    #[test]
    fn global_selection_pools_all_tensors() {
        let mut g = BTreeMap::new();
        g.insert("a".to_string(), vec![10.0, 0.0, 0.0, 0.0]);
        g.insert("b".to_string(), vec![9.0, 8.0, 7.0, 0.0]);
        // Budget: rate 0.5 → 2 per tensor, 4 in all; globally the 4 largest are a0, b0, b1, b2.
        let per = select_by_gradient(&g, 0.5, Selection::PerTensor);
        assert_eq!(per["a"], vec![0, 1]);
        assert_eq!(per["b"], vec![0, 1]);
        let global = select_by_gradient(&g, 0.5, Selection::Global);
        assert_eq!(global["a"], vec![0]);
        assert_eq!(global["b"], vec![0, 1, 2]);
    }

    #[test]
    fn random_selection_has_the_budget_and_depends_only_on_seed_and_name() {
        let shapes = vec![("x".to_string(), vec![10, 10]), ("y".to_string(), vec![50])];
        let a = select_random(&shapes, 0.29, 7);
        assert_eq!(a["x"].len(), 29);
        assert_eq!(a["y"].len(), 14); // ⌊14.5⌋
        assert!(a["x"].windows(2).all(|w| w[0] < w[1]) && *a["x"].last().unwrap() < 100);
        // The same tensor alone draws the same indices; another seed draws others.
        assert_eq!(select_random(&shapes[..1], 0.29, 7)["x"], a["x"]);
        assert_ne!(select_random(&shapes[..1], 0.29, 8)["x"], a["x"]);
    }

    /// MiniLM-L6: 6 layers, hidden 384; every attention weight is 384 × 384 = 147,456 entries,
    /// every attention bias 384. Counts worked by hand.
    #[test]
    fn budgets_match_hand_worked_minilm_counts() {
        let w = 147_456usize;
        // W_v: 6 tensors. 800,000 / 6 = 133,333.3 → 133,333 each = 799,998 (134 → 800,004 is further).
        let v = match_sparse_rate(&[w; 6], 800_000);
        assert_eq!(v.count, 799_998);
        assert_eq!(budget(v.setting, w), 133_333);
        // W_q,k,v,o: 24 tensors. 1,000 / 24 = 41.67: 41 → 984 (16 off), 42 → 1,008 (8 off).
        let qkvo = match_sparse_rate(&[w; 24], 1_000);
        assert_eq!(qkvo.count, 1_008);
        assert_eq!(budget(qkvo.setting, w), 42);
        // 1 % of each of 24 tensors: ⌊1474.56⌋ · 24 = 35,376, found back from the count.
        assert_eq!(sparse_count(&[w; 24], 0.01), 35_376);
        assert_eq!(match_sparse_rate(&[w; 24], 35_376).count, 35_376);
        // W_all (weights and biases of q, k, v, o): 24 weights + 24 biases; near this target a
        // bias buys ⌊384 r⌋ = 86 (it steps to 87 only at r = 87/384, where a weight buys 33,408).
        // 24·(k + 86) around 800,000: k = 33,247 → 799,992 (8 off), 33,248 → 800,016 (16 off).
        let mut all = vec![w; 24];
        all.extend([384usize; 24]);
        let m = match_sparse_rate(&all, 800_000);
        assert_eq!(m.count, 799_992);
        assert_eq!(budget(m.setting, w), 33_247);
        assert_eq!(budget(m.setting, 384), 86);
        // A target beyond every entry buys everything at rate 1.
        assert_eq!(match_sparse_rate(&[10, 20], 1_000).count, 30);
        // At least one entry per tensor: a target of 1 over 24 tensors still buys 24.
        assert_eq!(match_sparse_rate(&[w; 24], 1).count, 24);
    }

    #[test]
    fn lora_ranks_match_hand_worked_minilm_counts() {
        // q, k, v, o of 6 layers: 24 matrices of 384 × 384, 768 per rank each = 18,432 per rank.
        let qkvo = vec![(384usize, 384usize); 24];
        assert_eq!(lora_count(&qkvo, 8), 147_456);
        // 1,000,000 / 18,432 = 54.25 → rank 54 = 995,328.
        assert_eq!(
            match_lora_rank(&qkvo, 1_000_000),
            Matched {
                setting: 54.0,
                count: 995_328
            }
        );
        // 180,000 / 18,432 = 9.77 → rank 10 = 184,320 (rank 9 = 165,888 is further).
        assert_eq!(match_lora_rank(&qkvo, 180_000).count, 184_320);
        // Below one rank's worth, rank 1 is the least LoRA can train.
        assert_eq!(
            match_lora_rank(&qkvo, 1_000),
            Matched {
                setting: 1.0,
                count: 18_432
            }
        );
        // W_v only: 6 · 768 = 4,608 per rank; 800,000 / 4,608 = 173.6 → 174 = 801,792.
        assert_eq!(match_lora_rank(&[(384, 384); 6], 800_000).count, 801_792);
    }
}
