//! Strided GEMM on slices, through the `gemm` crate: the one matrix-product entry point of the
//! kernels and the training pass. Operands are read through explicit element strides, so
//! transposes and per-head blocks need no copies.

use candle_core::WithDType;

/// `dst = keep · dst + lhs · rhs` (keep is 0 or 1) with explicit element strides (column
/// stride, row stride); `parallel`: on candle's thread count, else on the calling thread.
///
/// # Safety
/// The pointers must cover the (m × k), (k × n) and (m × n) matrices the strides describe.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    (dst_cs, dst_rs): (isize, isize),
    keep: bool,
    lhs: *const T,
    (lhs_cs, lhs_rs): (isize, isize),
    rhs: *const T,
    (rhs_cs, rhs_rs): (isize, isize),
    parallel: bool,
) {
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let alpha = if keep { T::one() } else { T::zero() };
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            keep,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `dst (m × n) (+)= a (m × k) · bᵀ`, b (n × k) row-major.
pub(crate) fn matmul_nt<T: WithDType>(
    dst: &mut [T],
    keep: bool,
    a: &[T],
    b: &[T],
    (m, n, k): Dims3,
) {
    debug_assert!(b.len() == n * k);
    matmul_rhs_strided(dst, keep, a, (b, (k as isize, 1)), (m, n, k));
}

/// `dst (m × n) (+)= a (m × k) · b (k × n)`, all row-major.
pub(crate) fn matmul_nn<T: WithDType>(
    dst: &mut [T],
    keep: bool,
    a: &[T],
    b: &[T],
    (m, n, k): Dims3,
) {
    debug_assert!(b.len() == k * n);
    matmul_rhs_strided(dst, keep, a, (b, (1, n as isize)), (m, n, k));
}

/// `dst (m × n) (+)= a (m × k) · B`, dst and a row-major, B read through its (column, row)
/// element strides.
fn matmul_rhs_strided<T: WithDType>(
    dst: &mut [T],
    keep: bool,
    a: &[T],
    (b, b_strides): (&[T], (isize, isize)),
    (m, n, k): Dims3,
) {
    assert!(dst.len() == m * n && a.len() == m * k);
    unsafe {
        gemm_strided(
            (m, n, k),
            dst.as_mut_ptr(),
            (1, n as isize),
            keep,
            a.as_ptr(),
            (1, k as isize),
            b.as_ptr(),
            b_strides,
            true,
        )
    }
}

/// `dst (m × n) = aᵀ · b`, a (k × m) and b (k × n) row-major: a weight gradient δᵀx.
pub(crate) fn matmul_tn<T: WithDType>(a: &[T], b: &[T], (m, n, k): Dims3) -> Vec<T> {
    debug_assert!(a.len() == k * m && b.len() == k * n);
    let mut dst = vec![T::zero(); m * n];
    let (mi, ni) = (m as isize, n as isize);
    unsafe {
        gemm_strided(
            (m, n, k),
            dst.as_mut_ptr(),
            (1, ni),
            false,
            a.as_ptr(),
            (mi, 1),
            b.as_ptr(),
            (1, ni),
            true,
        )
    };
    dst
}

pub(crate) type Dims3 = (usize, usize, usize);
