//! GEMM throughput of the `gemm` crate (the one matrix-product entry point of sift-lab's kernels,
//! `src/kernels/gemm.rs`) on SmolLM2's training shapes, for each operand layout: row-major or
//! read transposed through strides. Compare with `scripts/bench_torch_gemm.py` (PyTorch, same
//! shapes and layouts) to see which products of the training pass trail PyTorch's.
//!
//!   cargo run --release --example gemm_layouts            # threads: RAYON_NUM_THREADS (default 2)
use std::time::Instant;

/// (m, k, n) of dst (m×n) = lhs (m×k) · rhs (k×n): a 2,048-token batch through SmolLM2's
/// projections (hidden 576, SwiGLU 1,536) and its tied 49,152-row embedding as output layer.
const SHAPES: [(usize, usize, usize); 7] = [
    (2048, 576, 1536),
    (576, 2048, 1536),
    (1536, 2048, 576),
    (2048, 1536, 576),
    (2048, 576, 49152),
    (49152, 2048, 576),
    (2048, 49152, 576),
];

fn main() {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    for (m, k, n) in SHAPES {
        let lhs: Vec<f32> = (0..m * k).map(|i| (i % 97) as f32 / 97.0).collect();
        let rhs: Vec<f32> = (0..k * n).map(|i| (i % 89) as f32 / 89.0).collect();
        let mut dst = vec![0f32; m * n];
        for (lhs_transposed, rhs_transposed) in
            [(false, false), (true, false), (false, true), (true, true)]
        {
            // (column stride, row stride) of each operand as stored.
            let (lhs_cs, lhs_rs) = if lhs_transposed {
                (m as isize, 1)
            } else {
                (1, k as isize)
            };
            let (rhs_cs, rhs_rs) = if rhs_transposed {
                (k as isize, 1)
            } else {
                (1, n as isize)
            };
            let mut product = || unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    lhs.as_ptr(),
                    lhs_cs,
                    lhs_rs,
                    rhs.as_ptr(),
                    rhs_cs,
                    rhs_rs,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                );
            };
            product(); // warm-up
            let repeats = 3;
            let start = Instant::now();
            for _ in 0..repeats {
                product();
            }
            let seconds = start.elapsed().as_secs_f64() / repeats as f64;
            println!(
                "{m}x{k}x{n} lhs_transposed={lhs_transposed} rhs_transposed={rhs_transposed}: {:.0} GFLOP/s",
                2.0 * (m * k * n) as f64 / 1e9 / seconds
            );
        }
    }
}
