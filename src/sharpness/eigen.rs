//! Spectral estimates of a symmetric operator known only through its product with a vector
//! (a Hessian-vector product): the top eigenvalues by Lanczos or power iteration, and the trace
//! by Hutchinson's estimator. Pure functions of the product, tested against closed forms on
//! small dense matrices; [`symmetric_eigen`] (cyclic Jacobi) solves the small dense problems
//! (Lanczos' tridiagonal matrix, and the dense Hessian of the tests).

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Eigenvalues (descending) and their unit eigenvectors (`vectors[i]` goes with `values[i]`) of
/// the symmetric n × n matrix `a` (row-major), by cyclic Jacobi rotations. For small n only
/// (O(n³) per sweep); the matrix is symmetrised as (A + Aᵀ)/2 first.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    assert_eq!(
        a.len(),
        n * n,
        "symmetric_eigen: {} entries for n = {n}",
        a.len()
    );
    let mut m: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            0.5 * (a[i * n + j] + a[j * n + i])
        })
        .collect();
    // Columns of v are the eigenvectors.
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let scale: f64 = m
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j] * m[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                // The rotation that zeroes m[p][q] (Golub & Van Loan, Algorithm 8.5.1).
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[j * n + j].total_cmp(&m[i * n + i]));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let vectors = order
        .iter()
        .map(|&i| (0..n).map(|k| v[k * n + i]).collect())
        .collect();
    (values, vectors)
}

/// The `k` largest eigenvalues (descending) of the symmetric n × n matrix `a` (row-major), for
/// larger n than [`symmetric_eigen`] serves: Householder reduction to tridiagonal form
/// (4n³/3 flops), then bisection on Sturm counts. `a` is symmetrised first.
pub fn top_eigenvalues(a: &[f64], n: usize, k: usize) -> Vec<f64> {
    assert_eq!(
        a.len(),
        n * n,
        "top_eigenvalues: {} entries for n = {n}",
        a.len()
    );
    let mut m: Vec<f64> = (0..n * n)
        .map(|idx| {
            let (i, j) = (idx / n, idx % n);
            0.5 * (a[i * n + j] + a[j * n + i])
        })
        .collect();
    let mut off = vec![0.0; n.saturating_sub(1)];
    for c in 0..n.saturating_sub(2) {
        // Reflect x = m[c+1.., c] onto α·e1 with H = I − 2vvᵀ, then m ← H·m·H on the trailing block.
        let x: Vec<f64> = (c + 1..n).map(|r| m[r * n + c]).collect();
        let norm_x = norm(&x);
        let alpha = if x[0] > 0.0 { -norm_x } else { norm_x };
        let mut v = x;
        v[0] -= alpha;
        let norm_v = norm(&v);
        off[c] = alpha;
        if norm_v <= f64::MIN_POSITIVE {
            off[c] = m[(c + 1) * n + c];
            continue;
        }
        v.iter_mut().for_each(|x| *x /= norm_v);
        let len = n - c - 1;
        let block = |i: usize, j: usize| (c + 1 + i) * n + c + 1 + j;
        let p: Vec<f64> = (0..len)
            .map(|i| (0..len).map(|j| m[block(i, j)] * v[j]).sum())
            .collect();
        let kk = dot(&v, &p);
        let q: Vec<f64> = p.iter().zip(&v).map(|(p, v)| p - kk * v).collect();
        for i in 0..len {
            for j in 0..len {
                m[block(i, j)] -= 2.0 * (v[i] * q[j] + q[i] * v[j]);
            }
        }
    }
    if n >= 2 {
        off[n - 2] = m[(n - 1) * n + n - 2];
    }
    let diag: Vec<f64> = (0..n).map(|i| m[i * n + i]).collect();
    // Sturm count: how many eigenvalues of the tridiagonal matrix lie below x.
    let below = |x: f64| -> usize {
        let mut count = 0;
        let mut q = 1.0;
        for i in 0..n {
            let e2 = if i == 0 { 0.0 } else { off[i - 1] * off[i - 1] };
            q = diag[i] - x - if i == 0 { 0.0 } else { e2 / q };
            if q == 0.0 {
                q = -f64::EPSILON * (diag[i].abs() + 1.0);
            }
            if q < 0.0 {
                count += 1;
            }
        }
        count
    };
    let radius = |i: usize| {
        (if i > 0 { off[i - 1].abs() } else { 0.0 }) + (if i + 1 < n { off[i].abs() } else { 0.0 })
    };
    let lo = (0..n)
        .map(|i| diag[i] - radius(i))
        .fold(f64::INFINITY, f64::min);
    let hi = (0..n)
        .map(|i| diag[i] + radius(i))
        .fold(f64::NEG_INFINITY, f64::max);
    (0..k.min(n))
        .map(|r| {
            // The (r+1)-th largest: the smallest x with at least n − r eigenvalues below it.
            let (mut a, mut b) = (lo - 1.0, hi + 1.0);
            for _ in 0..200 {
                let mid = 0.5 * (a + b);
                if mid <= a || mid >= b {
                    break;
                }
                if below(mid) >= n - r {
                    b = mid;
                } else {
                    a = mid;
                }
            }
            0.5 * (a + b)
        })
        .collect()
}

/// A unit vector of `n` standard-normal draws from `seed`.
pub fn random_unit(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    let r = norm(&v);
    v.iter_mut().for_each(|x| *x /= r);
    v
}

/// The top eigenvalues of an operator and how far each is from converged.
#[derive(Debug, Clone, Serialize)]
pub struct TopEigen {
    /// Largest first (algebraically, for Lanczos; by magnitude, for power iteration).
    pub values: Vec<f64>,
    /// ‖A·y − λ·y‖ of each Ritz pair (y the unit Ritz vector): an eigenvalue lies within this
    /// distance of λ.
    pub residuals: Vec<f64>,
    /// Operator products spent.
    pub products: usize,
}

/// The `k` largest eigenvalues of the symmetric `n`-dimensional operator `apply` by `steps`
/// Lanczos steps from a seeded random start, with full reorthogonalisation (so no spurious
/// copies of converged eigenvalues). The basis is kept in f32 (n·steps·4 bytes: 0.9 GB for
/// MiniLM's 22.7 M parameters and 10 steps), which limits the eigenvalues to about 1e-7
/// relative accuracy, far below what a few steps reach. Stops early when the Krylov space
/// is invariant (then the values are exact).
pub fn lanczos(
    n: usize,
    steps: usize,
    k: usize,
    seed: u64,
    mut apply: impl FnMut(&[f64]) -> Result<Vec<f64>>,
) -> Result<TopEigen> {
    ensure!(n > 0, "Lanczos on an empty space (no parameters in scope)");
    ensure!(
        steps >= 1 && k >= 1,
        "Lanczos needs at least one step and k ≥ 1"
    );
    let steps = steps.min(n);
    let mut basis: Vec<Vec<f32>> = Vec::with_capacity(steps);
    let (mut alphas, mut betas) = (Vec::new(), Vec::new());
    let mut q = random_unit(n, seed);
    let mut q_prev: Option<Vec<f64>> = None;
    let mut last_beta = 0.0;
    for j in 0..steps {
        let mut w = apply(&q)?;
        ensure!(
            w.len() == n,
            "operator returned {} entries, not {n}",
            w.len()
        );
        let alpha = dot(&q, &w);
        alphas.push(alpha);
        w.iter_mut().zip(&q).for_each(|(w, q)| *w -= alpha * q);
        if let (Some(p), Some(&b)) = (&q_prev, betas.last()) {
            w.iter_mut().zip(p).for_each(|(w, p)| *w -= b * p);
        }
        basis.push(q.iter().map(|&x| x as f32).collect());
        // Full reorthogonalisation, twice ("twice is enough").
        for _ in 0..2 {
            for b in &basis {
                let c: f64 = w.iter().zip(b).map(|(w, &b)| w * b as f64).sum();
                w.iter_mut().zip(b).for_each(|(w, &b)| *w -= c * b as f64);
            }
        }
        let beta = norm(&w);
        last_beta = beta;
        let scale = alphas.iter().map(|a| a.abs()).fold(0.0, f64::max);
        if j + 1 == steps || beta <= 1e-10 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        betas.push(beta);
        w.iter_mut().for_each(|x| *x /= beta);
        q_prev = Some(std::mem::replace(&mut q, w));
    }
    let m = alphas.len();
    let mut t = vec![0.0; m * m];
    for i in 0..m {
        t[i * m + i] = alphas[i];
        if i + 1 < m {
            t[i * m + i + 1] = betas[i];
            t[(i + 1) * m + i] = betas[i];
        }
    }
    let (values, vectors) = symmetric_eigen(&t, m);
    let k = k.min(m);
    Ok(TopEigen {
        values: values[..k].to_vec(),
        // The residual of a Ritz pair is |β_m · (last entry of its eigenvector of T)|.
        residuals: vectors[..k]
            .iter()
            .map(|s| (last_beta * s[m - 1]).abs())
            .collect(),
        products: m,
    })
}

/// The dominant eigenvalue (largest |λ|) by `iterations` steps of power iteration from a seeded
/// random start: the Rayleigh quotient of the last iterate and its residual.
pub fn power_iteration(
    n: usize,
    iterations: usize,
    seed: u64,
    mut apply: impl FnMut(&[f64]) -> Result<Vec<f64>>,
) -> Result<TopEigen> {
    ensure!(
        n > 0,
        "power iteration on an empty space (no parameters in scope)"
    );
    ensure!(
        iterations >= 1,
        "power iteration needs at least one iteration"
    );
    let mut q = random_unit(n, seed);
    let (mut lambda, mut residual) = (0.0, f64::INFINITY);
    for _ in 0..iterations {
        let w = apply(&q)?;
        ensure!(
            w.len() == n,
            "operator returned {} entries, not {n}",
            w.len()
        );
        lambda = dot(&q, &w);
        residual = w
            .iter()
            .zip(&q)
            .map(|(w, q)| (w - lambda * q).powi(2))
            .sum::<f64>()
            .sqrt();
        let r = norm(&w);
        if r == 0.0 {
            break; // A·q = 0: q is an eigenvector of 0.
        }
        q = w.into_iter().map(|x| x / r).collect();
    }
    Ok(TopEigen {
        values: vec![lambda],
        residuals: vec![residual],
        products: iterations,
    })
}

/// Hutchinson's trace estimate: the mean of vᵀAv over Rademacher probes v, with its standard
/// error (sample standard deviation / √probes; NaN for one probe).
#[derive(Debug, Clone, Serialize)]
pub struct TraceEstimate {
    pub trace: f64,
    pub std_error: f64,
    /// vᵀAv of each probe.
    pub samples: Vec<f64>,
}

/// A vector of `n` independent ±1 (Rademacher) entries.
pub fn rademacher(n: usize, rng: &mut impl Rng) -> Vec<f64> {
    (0..n)
        .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
        .collect()
}

/// Hutchinson's estimator of tr(A) with `probes` Rademacher vectors drawn from `seed`.
pub fn hutchinson(
    n: usize,
    probes: usize,
    seed: u64,
    mut apply: impl FnMut(&[f64]) -> Result<Vec<f64>>,
) -> Result<TraceEstimate> {
    ensure!(n > 0, "a trace of an empty space (no parameters in scope)");
    ensure!(probes >= 1, "Hutchinson needs at least one probe");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut samples = Vec::with_capacity(probes);
    for _ in 0..probes {
        let v = rademacher(n, &mut rng);
        let av = apply(&v)?;
        ensure!(
            av.len() == n,
            "operator returned {} entries, not {n}",
            av.len()
        );
        samples.push(dot(&v, &av));
    }
    let p = samples.len() as f64;
    let trace = samples.iter().sum::<f64>() / p;
    let std_error = if samples.len() > 1 {
        let var = samples.iter().map(|s| (s - trace).powi(2)).sum::<f64>() / (p - 1.0);
        (var / p).sqrt()
    } else {
        f64::NAN
    };
    Ok(TraceEstimate {
        trace,
        std_error,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The n × n matrix with `d` on the diagonal and `o` beside it: eigenvalues
    /// d + 2·o·cos(kπ/(n+1)), k = 1..n (closed form).
    fn toeplitz(n: usize, d: f64, o: f64) -> (Vec<f64>, Vec<f64>) {
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            a[i * n + i] = d;
            if i + 1 < n {
                a[i * n + i + 1] = o;
                a[(i + 1) * n + i] = o;
            }
        }
        let mut eig: Vec<f64> = (1..=n)
            .map(|k| d + 2.0 * o * (k as f64 * std::f64::consts::PI / (n as f64 + 1.0)).cos())
            .collect();
        eig.sort_by(|a, b| b.total_cmp(a));
        (a, eig)
    }

    fn apply_dense(a: &[f64], n: usize) -> impl FnMut(&[f64]) -> Result<Vec<f64>> + '_ {
        move |v: &[f64]| Ok((0..n).map(|i| dot(&a[i * n..(i + 1) * n], v)).collect())
    }

    /// A symmetric matrix Q·diag(λ)·Qᵀ with a seeded orthogonal Q (Gram-Schmidt of Gaussians).
    fn rotated(eigenvalues: &[f64], seed: u64) -> Vec<f64> {
        let n = eigenvalues.len();
        let mut q: Vec<Vec<f64>> = Vec::new();
        for i in 0..n {
            let mut v = random_unit(n, seed + i as u64);
            for u in &q {
                let c = dot(&v, u);
                v.iter_mut().zip(u).for_each(|(v, u)| *v -= c * u);
            }
            let r = norm(&v);
            q.push(v.into_iter().map(|x| x / r).collect());
        }
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| q[k][i] * eigenvalues[k] * q[k][j]).sum();
            }
        }
        a
    }

    #[test]
    fn jacobi_matches_the_closed_form_of_a_tridiagonal_toeplitz_matrix() {
        let (a, eig) = toeplitz(12, 2.0, -1.0);
        let (values, vectors) = symmetric_eigen(&a, 12);
        for (v, e) in values.iter().zip(&eig) {
            assert!((v - e).abs() < 1e-12, "{v} vs {e}");
        }
        // A·x = λ·x for the returned vectors.
        let mut apply = apply_dense(&a, 12);
        for (l, x) in values.iter().zip(&vectors) {
            let ax = apply(x).unwrap();
            let r: f64 = ax.iter().zip(x).map(|(a, x)| (a - l * x).powi(2)).sum();
            assert!(r.sqrt() < 1e-12);
        }
    }

    #[test]
    fn householder_and_bisection_match_closed_forms() {
        let (a, eig) = toeplitz(40, 2.0, -1.0);
        let top = top_eigenvalues(&a, 40, 4);
        for (v, e) in top.iter().zip(&eig) {
            assert!((v - e).abs() < 1e-10, "{v} vs {e}");
        }
        let mut spectrum: Vec<f64> = (0..50).map(|i| (i as f64 - 20.0) / 7.0).collect();
        spectrum[3] = 11.0;
        spectrum[9] = 11.0; // a double eigenvalue
        let a = rotated(&spectrum, 9);
        let mut sorted = spectrum.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let top = top_eigenvalues(&a, 50, 5);
        for (v, e) in top.iter().zip(&sorted) {
            assert!((v - e).abs() < 1e-9, "{v} vs {e}: {top:?}");
        }
    }

    #[test]
    fn lanczos_finds_the_top_eigenvalues_of_a_rotated_spectrum() {
        // Two separated top eigenvalues (and a negative one of larger magnitude, which power
        // iteration would find instead) above a bulk in [0, 1].
        let mut eig: Vec<f64> = (0..60).map(|i| i as f64 / 59.0).collect();
        eig[10] = 9.0;
        eig[20] = 6.0;
        eig[30] = -12.0;
        let a = rotated(&eig, 3);
        let top = lanczos(60, 25, 2, 7, apply_dense(&a, 60)).unwrap();
        // Within 1e-6 relative: the basis is stored in f32.
        assert!((top.values[0] - 9.0).abs() < 9e-6, "{:?}", top.values);
        assert!((top.values[1] - 6.0).abs() < 6e-6, "{:?}", top.values);
        assert!(top.residuals[0] < 1e-4, "{:?}", top.residuals);
        assert_eq!(top.products, 25);
        // Every step of a full space: all eigenvalues, exactly.
        let (t, exact) = toeplitz(30, 1.0, 0.5);
        let all = lanczos(30, 30, 30, 1, apply_dense(&t, 30)).unwrap();
        for (v, e) in all.values.iter().zip(&exact) {
            assert!((v - e).abs() < 1e-6, "{v} vs {e}");
        }
        // After few steps the Ritz value stays below λ_max, and some eigenvalue lies within its
        // residual.
        let few = lanczos(60, 5, 1, 7, apply_dense(&a, 60)).unwrap();
        assert!(few.values[0] <= 9.0 + 1e-6);
        let nearest = eig
            .iter()
            .map(|e| (e - few.values[0]).abs())
            .fold(f64::INFINITY, f64::min);
        assert!(nearest <= few.residuals[0] + 1e-6, "{few:?}");
    }

    #[test]
    fn power_iteration_finds_the_dominant_eigenvalue() {
        let mut eig: Vec<f64> = (0..40).map(|i| i as f64 / 39.0).collect();
        eig[5] = 10.0;
        let a = rotated(&eig, 11);
        let top = power_iteration(40, 60, 2, apply_dense(&a, 40)).unwrap();
        assert!((top.values[0] - 10.0).abs() < 1e-8, "{:?}", top.values);
        assert!(top.residuals[0] < 1e-6);
    }

    #[test]
    fn hutchinson_is_exact_on_a_diagonal_and_its_error_shrinks_as_one_over_root_probes() {
        let d: Vec<f64> = (0..20).map(|i| i as f64 - 3.5).collect();
        let mut a = vec![0.0; 400];
        (0..20).for_each(|i| a[i * 20 + i] = d[i]);
        let est = hutchinson(20, 3, 0, apply_dense(&a, 20)).unwrap();
        let tr: f64 = d.iter().sum();
        assert!((est.trace - tr).abs() < 1e-12 && est.std_error.abs() < 1e-12);

        // Rademacher probes: Var(vᵀAv) = 2·(‖A‖_F² − Σ A_ii²) (closed form).
        let a = rotated(
            &(0..20).map(|i| (i as f64 - 5.0) / 3.0).collect::<Vec<_>>(),
            5,
        );
        let tr: f64 = (0..20).map(|i| a[i * 20 + i]).sum();
        let off: f64 = (0..20)
            .flat_map(|i| (0..20).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * 20 + j].powi(2))
            .sum();
        let sd = (2.0 * off).sqrt();
        let reps = 400;
        let mut rms = Vec::new();
        for probes in [4usize, 16, 64] {
            let (mut sq, mut se) = (0.0, 0.0);
            for r in 0..reps {
                let e = hutchinson(20, probes, 1000 + r, apply_dense(&a, 20)).unwrap();
                sq += (e.trace - tr).powi(2);
                se += e.std_error;
            }
            let (rms_error, mean_se) = ((sq / reps as f64).sqrt(), se / reps as f64);
            let expected = sd / (probes as f64).sqrt();
            assert!(
                (rms_error / expected - 1.0).abs() < 0.12,
                "{probes} probes: RMS error {rms_error} vs σ/√P {expected}"
            );
            assert!(
                (mean_se / expected - 1.0).abs() < 0.2,
                "{probes} probes: mean standard error {mean_se} vs {expected}"
            );
            rms.push(rms_error);
        }
        // Four times the probes, half the error.
        assert!((rms[0] / rms[1] - 2.0).abs() < 0.3 && (rms[1] / rms[2] - 2.0).abs() < 0.3);
    }
}
