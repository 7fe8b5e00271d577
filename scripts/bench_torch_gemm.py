#!/usr/bin/env python3
"""PyTorch's GEMM throughput on the shapes and layouts of `cargo run --release --example
gemm_layouts` (see there). Usage: bench-venv/bin/python scripts/bench_torch_gemm.py [THREADS]"""
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
SHAPES = [(2048, 576, 1536), (576, 2048, 1536), (1536, 2048, 576), (2048, 1536, 576),
          (2048, 576, 49152), (49152, 2048, 576), (2048, 49152, 576)]
for m, k, n in SHAPES:
    for lhs_t, rhs_t in [(False, False), (True, False), (False, True), (True, True)]:
        lhs = torch.rand(k, m).t() if lhs_t else torch.rand(m, k)
        rhs = torch.rand(n, k).t() if rhs_t else torch.rand(k, n)
        lhs @ rhs  # warm-up
        repeats = 3
        start = time.perf_counter()
        for _ in range(repeats):
            lhs @ rhs
        seconds = (time.perf_counter() - start) / repeats
        print(f"{m}x{k}x{n} lhs_transposed={str(lhs_t).lower()} rhs_transposed={str(rhs_t).lower()}: "
              f"{2 * m * k * n / 1e9 / seconds:.0f} GFLOP/s")
