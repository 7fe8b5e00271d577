//! The pure math of `grad-stats`, on flat gradient vectors: top-x% curves, top-k masks and their
//! ratios, histograms with given bins, and streaming moments. No tensors, no I/O, so each piece
//! is checked against closed forms on constructed vectors (see the tests at the bottom).

/// The x grid of the top-x% curve, in percent: `per_decade` points per decade from 0.01 % to
/// 100 % inclusive (4 decades, so `4·per_decade + 1` points; 1 % is on the grid exactly).
pub fn log_grid_percent(per_decade: usize) -> Vec<f64> {
    let per_decade = per_decade.max(1);
    (0..=4 * per_decade)
        .map(|i| 10f64.powf(-2.0 + i as f64 / per_decade as f64))
        .collect()
}

/// How many components "the top x %" of the curve are: ⌈x·n⌉, at least 1 and at most `n`
/// (SPEC: P(x) = ‖g_top⌈x·n⌉‖₂ / ‖g‖₂).
pub fn top_count(n: usize, percent: f64) -> usize {
    if n == 0 {
        return 0;
    }
    let exact = percent / 100.0 * n as f64;
    // Shave a relative 1e-12 so that an exact product such as 1 % of 300 = 3.0000000000000004
    // rounds to 3, not 4.
    let k = (exact * (1.0 - 1e-12)).ceil() as usize;
    k.clamp(1, n)
}

/// The top-x% curve of one gradient at the given x values (percent).
#[derive(Debug, Clone, PartialEq)]
pub struct TopxCurve {
    pub x_percent: Vec<f64>,
    /// ‖g_top⌈x·n⌉‖₂ / ‖g‖₂ (the paper's "gradient proportion", as the reference code records it).
    pub norm_ratio: Vec<f64>,
    /// The squared ratio: the share of ‖g‖₂² the top components carry.
    pub sq_share: Vec<f64>,
}

/// Sorts |g|² descending and reads the cumulative share at each x. A zero gradient has no
/// defined share: its ratios are NaN.
pub fn topx_curve(g: &[f32], grid_percent: &[f64]) -> TopxCurve {
    let mut squares: Vec<f64> = g.iter().map(|&v| (v as f64) * (v as f64)).collect();
    squares.sort_unstable_by(|a, b| b.total_cmp(a));
    // cumulative[k] = sum of the k largest squares.
    let mut cumulative = Vec::with_capacity(squares.len() + 1);
    cumulative.push(0.0f64);
    let mut running = 0.0f64;
    for s in &squares {
        running += s;
        cumulative.push(running);
    }
    let total = running;
    let mut norm_ratio = Vec::with_capacity(grid_percent.len());
    let mut sq_share = Vec::with_capacity(grid_percent.len());
    for &x in grid_percent {
        let k = top_count(g.len(), x);
        let share = if total > 0.0 {
            (cumulative[k] / total).min(1.0)
        } else {
            f64::NAN
        };
        sq_share.push(share);
        norm_ratio.push(share.sqrt());
    }
    TopxCurve {
        x_percent: grid_percent.to_vec(),
        norm_ratio,
        sq_share,
    }
}

/// Size of the intersection of two ascending index lists.
pub fn intersection_count(a: &[u32], b: &[u32]) -> usize {
    let (mut i, mut j, mut count) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                count += 1;
                i += 1;
                j += 1;
            }
        }
    }
    count
}

/// Sum of g² over the given indices.
pub fn squared_norm_at(g: &[f32], indices: &[u32]) -> f64 {
    indices
        .iter()
        .map(|&i| {
            let v = g[i as usize] as f64;
            v * v
        })
        .sum()
}

pub fn squared_norm(g: &[f32]) -> f64 {
    g.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

/// What the mask ratios of one batch are made of, kept as sums so that several tensors can be
/// pooled (sum the parts, then take the ratios).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MaskSums {
    /// ‖g_t[M_1]‖², the first batch's mask applied to this batch's gradient.
    pub sq_first: f64,
    /// ‖g_t[M_t]‖², this batch's own mask.
    pub sq_own: f64,
    /// ‖g_t‖².
    pub sq_total: f64,
    /// |M_1 ∩ M_t|.
    pub intersection: usize,
    /// |M_t|.
    pub own_size: usize,
}

impl MaskSums {
    /// `first` and `own` are ascending index lists (from [`crate::budget::top_k_indices`]).
    pub fn of(g: &[f32], first: &[u32], own: &[u32]) -> MaskSums {
        MaskSums {
            sq_first: squared_norm_at(g, first),
            sq_own: squared_norm_at(g, own),
            sq_total: squared_norm(g),
            intersection: intersection_count(first, own),
            own_size: own.len(),
        }
    }

    pub fn add(&mut self, other: &MaskSums) {
        self.sq_first += other.sq_first;
        self.sq_own += other.sq_own;
        self.sq_total += other.sq_total;
        self.intersection += other.intersection;
        self.own_size += other.own_size;
    }

    pub fn ratios(&self) -> MaskRatios {
        let ratio = |sq: f64| {
            if self.sq_total > 0.0 {
                (sq / self.sq_total).min(1.0).sqrt()
            } else {
                f64::NAN
            }
        };
        MaskRatios {
            r_first: ratio(self.sq_first),
            r_own: ratio(self.sq_own),
            overlap: if self.own_size > 0 {
                self.intersection as f64 / self.own_size as f64
            } else {
                f64::NAN
            },
        }
    }
}

/// SPEC "First-batch mask vs per-batch mask": r_first(t) = ‖g_t[M_1]‖/‖g_t‖,
/// r_own(t) = ‖g_t[M_t]‖/‖g_t‖, overlap = |M_1 ∩ M_t| / |M_t|.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskRatios {
    pub r_first: f64,
    pub r_own: f64,
    pub overlap: f64,
}

/// Counts of `values` in `bins` equal bins over [lo, hi]. The right edge belongs to the last
/// bin; values outside the range are clamped into the edge bins (with the ±max|g| ranges
/// grad-stats uses, none are outside). Non-finite values are not counted.
pub fn histogram(values: &[f32], lo: f64, hi: f64, bins: usize) -> Vec<u64> {
    let mut counts = vec![0u64; bins];
    if bins == 0 {
        return counts;
    }
    let width = (hi - lo) / bins as f64;
    for &v in values {
        let v = v as f64;
        if !v.is_finite() {
            continue;
        }
        let bin = if width > 0.0 {
            ((v - lo) / width).floor()
        } else {
            // A degenerate range (all values equal, e.g. an all-zero gradient): the middle bin.
            (bins / 2) as f64
        };
        let bin = bin.clamp(0.0, (bins - 1) as f64) as usize;
        counts[bin] += 1;
    }
    counts
}

/// The symmetric range ±max|g| (or ±1 for an all-zero vector, so the bins stay valid).
pub fn symmetric_range(max_abs: f64) -> (f64, f64) {
    if max_abs > 0.0 && max_abs.is_finite() {
        (-max_abs, max_abs)
    } else {
        (-1.0, 1.0)
    }
}

/// Streaming moments of a set of values (power sums in f64), for the summary statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub count: u64,
    pub sum: f64,
    pub sum2: f64,
    pub sum3: f64,
    pub sum4: f64,
    pub max_abs: f64,
    pub zeros: u64,
}

impl Moments {
    pub fn of(values: &[f32]) -> Moments {
        let mut m = Moments::default();
        m.add(values);
        m
    }

    pub fn add(&mut self, values: &[f32]) {
        for &v in values {
            let x = v as f64;
            let x2 = x * x;
            self.count += 1;
            self.sum += x;
            self.sum2 += x2;
            self.sum3 += x2 * x;
            self.sum4 += x2 * x2;
            self.max_abs = self.max_abs.max(x.abs());
            if v == 0.0 {
                self.zeros += 1;
            }
        }
    }

    pub fn merge(&mut self, other: &Moments) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum2 += other.sum2;
        self.sum3 += other.sum3;
        self.sum4 += other.sum4;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.zeros += other.zeros;
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// Second central moment (population variance).
    fn m2(&self) -> f64 {
        let n = self.count as f64;
        let mu = self.mean();
        (self.sum2 / n - mu * mu).max(0.0)
    }

    /// Population standard deviation.
    pub fn std(&self) -> f64 {
        self.m2().sqrt()
    }

    /// Root mean square.
    pub fn rms(&self) -> f64 {
        (self.sum2 / self.count as f64).sqrt()
    }

    /// ‖g‖₂ of everything added.
    pub fn l2_norm(&self) -> f64 {
        self.sum2.sqrt()
    }

    /// Excess kurtosis m4/m2² − 3 (0 for a normal distribution; large for heavy tails).
    pub fn excess_kurtosis(&self) -> f64 {
        let n = self.count as f64;
        let mu = self.mean();
        let (e2, e3, e4) = (self.sum2 / n, self.sum3 / n, self.sum4 / n);
        let m4 = e4 - 4.0 * mu * e3 + 6.0 * mu * mu * e2 - 3.0 * mu.powi(4);
        let m2 = self.m2();
        if m2 > 0.0 {
            m4 / (m2 * m2) - 3.0
        } else {
            f64::NAN
        }
    }

    /// Share of entries that are exactly zero.
    pub fn zero_share(&self) -> f64 {
        self.zeros as f64 / self.count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::top_k_indices;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn grid_spans_four_decades_and_contains_one_percent() {
        let grid = log_grid_percent(20);
        assert_eq!(grid.len(), 81);
        assert!(close(grid[0], 0.01, 1e-12));
        assert_eq!(grid[40], 1.0);
        assert!(close(grid[80], 100.0, 1e-12));
        assert!(grid.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn top_count_is_the_ceiling_clamped_to_one_and_n() {
        assert_eq!(top_count(300, 1.0), 3);
        assert_eq!(top_count(147_456, 1.0), 1475); // 1474.56 rounds up
        assert_eq!(top_count(100, 0.01), 1); // 0.01 rounds up to 1
        assert_eq!(top_count(1000, 100.0), 1000);
        assert_eq!(top_count(7, 50.0), 4);
        assert_eq!(top_count(0, 1.0), 0);
    }

    /// g_i = √i (i = 1..n), shuffled and signed: the top k components carry
    /// Σ_{i>n−k} i of the total n(n+1)/2 of ‖g‖².
    #[test]
    fn topx_curve_matches_the_closed_form_for_square_root_magnitudes() {
        let n = 1000usize;
        let mut g: Vec<f32> = (1..=n)
            .map(|i| {
                let sign = if i % 3 == 0 { -1.0 } else { 1.0 };
                sign * (i as f32).sqrt()
            })
            .collect();
        // A fixed permutation so the order carries no information.
        g.reverse();
        g.swap(10, 500);
        g.swap(3, 777);
        let grid = vec![0.1, 1.0, 10.0, 33.3, 100.0];
        let curve = topx_curve(&g, &grid);
        let total = (n * (n + 1) / 2) as f64;
        for (j, &x) in grid.iter().enumerate() {
            let k = top_count(n, x);
            let top: f64 = ((n - k + 1)..=n).map(|i| i as f64).sum();
            let share = top / total;
            assert!(close(curve.sq_share[j], share, 1e-6), "x = {x}");
            assert!(close(curve.norm_ratio[j], share.sqrt(), 1e-6), "x = {x}");
        }
        assert!(close(curve.norm_ratio[4], 1.0, 1e-12));
    }

    /// One spike among equal components: n = 10 000, one entry of magnitude a, the rest 1.
    /// Top 0.01 % (one entry) carries a²/(a² + n − 1) of ‖g‖².
    #[test]
    fn topx_curve_of_a_spike() {
        let n = 10_000;
        let a = 100.0f32;
        let mut g = vec![1.0f32; n];
        g[1234] = -a;
        let curve = topx_curve(&g, &[0.01, 1.0]);
        let total = (a * a) as f64 + (n - 1) as f64;
        assert!(close(curve.sq_share[0], (a * a) as f64 / total, 1e-9));
        // top 1 % = 100 entries: the spike and 99 ones.
        assert!(close(
            curve.norm_ratio[1],
            (((a * a) as f64 + 99.0) / total).sqrt(),
            1e-9
        ));
    }

    #[test]
    fn zero_gradient_has_undefined_shares() {
        let curve = topx_curve(&[0.0; 10], &[1.0]);
        assert!(curve.norm_ratio[0].is_nan());
    }

    #[test]
    fn top_k_picks_the_largest_magnitudes_and_breaks_ties_by_index() {
        let g = [0.5f32, -3.0, 2.0, -2.0, 0.0, 3.0];
        assert_eq!(top_k_indices(&g, 2), vec![1, 5]);
        // |2| twice: the lower index (2) wins.
        assert_eq!(top_k_indices(&g, 3), vec![1, 2, 5]);
        assert_eq!(top_k_indices(&g, 10), vec![0, 1, 2, 3, 4, 5]);
        assert!(top_k_indices(&g, 0).is_empty());
    }

    /// Two batches with known masks: M_1 = {0, 1}; batch t has its largest entries at {1, 2}.
    #[test]
    fn mask_ratios_match_hand_computed_values() {
        let g1 = [4.0f32, -3.0, 0.1, 0.2, 0.0];
        let gt = [1.0f32, 2.0, -5.0, 0.5, 0.5];
        let m1 = top_k_indices(&g1, 2);
        let mt = top_k_indices(&gt, 2);
        assert_eq!(m1, vec![0, 1]);
        assert_eq!(mt, vec![1, 2]);
        let sums = MaskSums::of(&gt, &m1, &mt);
        let total = 1.0 + 4.0 + 25.0 + 0.25 + 0.25;
        let r = sums.ratios();
        assert!(close(r.r_first, (5.0f64 / total).sqrt(), 1e-12));
        assert!(close(r.r_own, (29.0f64 / total).sqrt(), 1e-12));
        assert!(close(r.overlap, 0.5, 1e-12));
        // The first batch against itself: both ratios equal, overlap 1.
        let own = MaskSums::of(&g1, &m1, &m1).ratios();
        assert_eq!(own.r_first, own.r_own);
        assert_eq!(own.overlap, 1.0);
        // r_own is the top-x curve at the same x.
        let curve = topx_curve(&gt, &[40.0]);
        assert!(close(curve.norm_ratio[0], r.r_own, 1e-12));
    }

    /// Disjoint masks lose exactly the own mask's mass; pooling two tensors adds the sums.
    #[test]
    fn mask_sums_pool_across_tensors() {
        let a = MaskSums {
            sq_first: 1.0,
            sq_own: 3.0,
            sq_total: 4.0,
            intersection: 0,
            own_size: 2,
        };
        let b = MaskSums {
            sq_first: 5.0,
            sq_own: 5.0,
            sq_total: 12.0,
            intersection: 2,
            own_size: 2,
        };
        let mut pooled = a;
        pooled.add(&b);
        let r = pooled.ratios();
        assert!(close(r.r_first, (6.0f64 / 16.0).sqrt(), 1e-12));
        assert!(close(r.r_own, (8.0f64 / 16.0).sqrt(), 1e-12));
        assert!(close(r.overlap, 0.5, 1e-12));
    }

    #[test]
    fn intersection_of_sorted_lists() {
        assert_eq!(intersection_count(&[1, 3, 5, 7], &[2, 3, 4, 7, 9]), 2);
        assert_eq!(intersection_count(&[], &[1]), 0);
    }

    #[test]
    fn histogram_counts_sum_to_the_number_of_entries_and_land_in_the_right_bins() {
        let values: Vec<f32> = (-50..=50).map(|i| i as f32).collect();
        let counts = histogram(&values, -50.0, 50.0, 10);
        assert_eq!(counts.iter().sum::<u64>(), 101);
        // [-50, -40) holds -50..=-41; the right edge 50 joins the last bin [40, 50].
        assert_eq!(counts[0], 10);
        assert_eq!(counts[5], 10);
        assert_eq!(counts[9], 11);
        let clamped = histogram(&[-5.0, 5.0, 0.0], -1.0, 1.0, 4);
        assert_eq!(clamped, vec![1, 0, 1, 1]);
        assert_eq!(histogram(&[0.0; 3], 0.0, 0.0, 3), vec![0, 3, 0]);
    }

    #[test]
    fn moments_match_two_pass_formulas() {
        let values: Vec<f32> = (0..2000)
            .map(|i| ((i * 7919 % 2000) as f32 / 1000.0 - 1.0).powi(3) * 1e-4 + 2e-6)
            .chain([0.0, 0.0])
            .collect();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let m2 = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let m4 = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(4))
            .sum::<f64>()
            / n;
        // Streaming over two chunks, merged.
        let mut m = Moments::of(&values[..700]);
        m.merge(&Moments::of(&values[700..]));
        assert!(close(m.mean(), mean, 1e-9));
        assert!(close(m.std(), m2.sqrt(), 1e-9));
        assert!(close(m.excess_kurtosis(), m4 / (m2 * m2) - 3.0, 1e-6));
        assert_eq!(m.zeros, 2);
        assert!(close(m.zero_share(), 2.0 / n, 1e-12));
        assert!(close(m.max_abs, 1e-4 + 2e-6, 1e-6));
    }

    #[test]
    fn kurtosis_of_symmetric_two_point_distribution_is_minus_two() {
        let m = Moments::of(&[1.0, -1.0, 1.0, -1.0]);
        assert!(close(m.excess_kurtosis(), -2.0, 1e-12));
    }
}
