//! The unbiased pass@k estimator of Chen et al. 2021 (Codex paper, eq. 1): with n samples of a
//! problem of which c pass, pass@k = 1 − C(n−c, k) / C(n, k), the chance that k samples drawn
//! without replacement from the n include a passing one. The ratio of binomials is computed as
//! the product Π_{i=n−c+1}^{n} (1 − k/i), which neither overflows nor cancels.

use std::collections::BTreeMap;

/// pass@k of one problem with `n` samples, `c` of them correct; `None` when k > n (not
/// estimable from n samples) or k = 0.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> Option<f64> {
    if k == 0 || k > n || c > n {
        return None;
    }
    if n - c < k {
        return Some(1.0);
    }
    let miss: f64 = (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    Some(1.0 - miss)
}

/// The ks reported for `n` samples per problem: 1, 10, 100, ... up to n.
pub fn reported_ks(n: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |k| k.checked_mul(10))
        .take_while(|&k| k <= n)
        .collect()
}

/// The mean over problems of pass@k for each reported k, from each problem's (n, c). Problems
/// with fewer than k samples are left out of that k's mean; a k no problem reaches is absent.
pub fn mean_pass_at_k(counts: &[(usize, usize)]) -> BTreeMap<String, f64> {
    let most = counts.iter().map(|&(n, _)| n).max().unwrap_or(0);
    let mut out = BTreeMap::new();
    for k in reported_ks(most) {
        let values: Vec<f64> = counts
            .iter()
            .filter_map(|&(n, c)| pass_at_k(n, c, k))
            .collect();
        if !values.is_empty() {
            out.insert(
                format!("pass@{k}"),
                values.iter().sum::<f64>() / values.len() as f64,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The share of the k-subsets of n samples (the first c correct) that hold a correct one,
    /// by enumerating every subset as a bit mask.
    fn brute_force(n: usize, c: usize, k: usize) -> f64 {
        let (mut hits, mut total) = (0u64, 0u64);
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize != k {
                continue;
            }
            total += 1;
            hits += u64::from(mask & ((1u32 << c) - 1) != 0);
        }
        hits as f64 / total as f64
    }

    #[test]
    fn matches_hand_worked_values() {
        // n=5, c=2, k=2: 1 − C(3,2)/C(5,2) = 1 − 3/10.
        assert!((pass_at_k(5, 2, 2).unwrap() - 0.7).abs() < 1e-15);
        // k=1 is the plain pass rate c/n.
        assert!((pass_at_k(10, 3, 1).unwrap() - 0.3).abs() < 1e-15);
        // n=10, c=1, k=5: 1 − C(9,5)/C(10,5) = 1 − 126/252.
        assert!((pass_at_k(10, 1, 5).unwrap() - 0.5).abs() < 1e-15);
        // Too few failures to fill k draws: certain.
        assert_eq!(pass_at_k(4, 3, 2), Some(1.0));
        assert_eq!(pass_at_k(4, 0, 2), Some(0.0));
        assert_eq!(pass_at_k(3, 1, 4), None);
        // n=200, c=1, k=100 is 1/2 exactly, with C(200,100) ≈ 9e58 far outside f64's exact range.
        assert!((pass_at_k(200, 1, 100).unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn matches_enumeration_of_every_subset() {
        for n in 1..=10 {
            for c in 0..=n {
                for k in 1..=n {
                    let want = brute_force(n, c, k);
                    let got = pass_at_k(n, c, k).unwrap();
                    assert!(
                        (got - want).abs() < 1e-12,
                        "n={n} c={c} k={k}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn means_over_problems_per_reported_k() {
        assert_eq!(reported_ks(1), [1]);
        assert_eq!(reported_ks(25), [1, 10]);
        assert_eq!(reported_ks(100), [1, 10, 100]);
        // Two problems with 10 samples: 3 and 0 correct.
        let m = mean_pass_at_k(&[(10, 3), (10, 0)]);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["pass@1", "pass@10"]);
        assert!((m["pass@1"] - 0.15).abs() < 1e-15);
        assert!((m["pass@10"] - 0.5).abs() < 1e-15);
    }
}
