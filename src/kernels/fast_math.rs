//! Branch-free f32 `exp` and `erf` that the compiler vectorises, and a helper that runs a loop
//! with the CPU's widest vector instructions.
//!
//! libm's scalar `expf`/`erff` made softmax and GELU a quarter of a training step; these are
//! polynomial approximations (Cephes' `expf`, Eigen's/XLA's rational `erf`) accurate to a few
//! ulp, written without branches so that a loop over them compiles to AVX2/AVX-512 code.

/// Runs `f` compiled for the best instruction set this CPU has (AVX-512, AVX2+FMA or the
/// baseline), chosen at run time: loops inside `f` that call the `#[inline(always)]` functions
/// below are vectorised for that set. The closure must be `#[inline(always)]`: a closure body
/// that stays a separate function is compiled for the baseline instruction set.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// e^x in f32, within 2 ulp of the exact value for x in [−87.3, 88.3]; exactly 0 below −87.3
/// (where f32 underflows to denormals), so masked attention scores of −1e30 give exactly zero
/// weight; saturates at e^88.3 above (sift-lab only calls it with x ≤ 0).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·ln2 is subtracted without rounding error (Cephes).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding and subtracting it rounds to the nearest integer without a call.
    const ROUND: f32 = 12_582_912.0;
    let underflow = x < -87.3;
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // 2^n from n's bits, which sit in t's mantissa: `n as i32` is a saturating conversion
    // that made this function 4× slower (it does not vectorise to a plain cvttps2dq).
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    if underflow {
        0.0
    } else {
        e * scale
    }
}

/// erf(x) in f32 (rational approximation on [−4, 4], its value at ±4 beyond), max
/// absolute error 4e-7 (a few f32 ulp of values near ±1).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024_1e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_600e-3;
    p = p * x2 + -1.609_603_3e-2;
    let p = x * p;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against libm's f64 functions on a dense grid, including the tails.
    #[test]
    fn exp_and_erf_match_libm() {
        let mut worst_exp: f64 = 0.0;
        let mut worst_erf: f64 = 0.0;
        for i in 0..=200_000 {
            // Grid points exactly representable in f32, so only the function's error counts.
            let x = (-90.0 + 180.0 * i as f64 / 200_000.0) as f32 as f64;
            let exact = x.exp();
            let got = exp_f32(x as f32) as f64;
            if (-87.3..88.3).contains(&x) {
                worst_exp = worst_exp.max(((got - exact) / exact).abs());
            }
            let t = (x / 10.0) as f32 as f64;
            worst_erf = worst_erf.max((erf_f32(t as f32) as f64 - libm::erf(t)).abs());
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 5e-7, "erf absolute error {worst_erf}");
        assert_eq!(exp_f32(-1e30), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(erf_f32(0.0), 0.0);
        assert!((erf_f32(9.0) - 1.0).abs() < 2e-7 && (erf_f32(-9.0) + 1.0).abs() < 2e-7);
    }

    #[test]
    fn vectorized_runs_the_closure() {
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 / 100.0 - 5.0).collect();
        let ys = vectorized(|| xs.iter().map(|&x| exp_f32(x)).collect::<Vec<_>>());
        for (x, y) in xs.iter().zip(ys) {
            assert!(((y as f64 - (*x as f64).exp()) / (*x as f64).exp()).abs() < 3e-7);
        }
    }
}
