#!/usr/bin/env python3
"""Side-by-side benchmark: sift-lab (candle) vs PyTorch + transformers, same machine and shapes.

Runs `sift-lab bench --json` and `scripts/bench_torch.py --json` (in the bench venv, see
scripts/requirements-bench.txt) with the same thread count, batch and sequence length, and
prints seconds per forward batch and per training step with the ratio sift-lab / PyTorch.

    python3 scripts/bench_compare.py --threads 2 --batch-size 32 --seq-len 128
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    sys.stderr.write(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--python", default=os.path.join(ROOT, "bench-venv", "bin", "python"),
                   help="python with torch + transformers (default: ./bench-venv)")
    args = p.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    shape = ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--iters", str(args.iters)]
    subprocess.run(["cargo", "build", "--release", "--quiet"], check=True, cwd=ROOT)
    ours = run_json([os.path.join(ROOT, "target", "release", "sift-lab"), "--threads", str(args.threads), "bench", "--json", *shape], env)
    theirs = run_json([args.python, os.path.join(ROOT, "scripts", "bench_torch.py"), "--threads", str(args.threads), "--json", *shape], env)
    print(f"MiniLM-L6 (all-MiniLM-L6-v2 + 2-way head), batch {args.batch_size} x {args.seq_len} tokens, {args.threads} threads, median of {args.iters}")
    print(f"{'':28}{'sift-lab':>12}{'PyTorch':>12}{'ratio':>9}")
    for key, label in [("forward_s", "forward (s/batch)"), ("forward_backward_s", "forward+backward (s/step)"),
                       ("train_step_s", "full train step (s/step)")]:
        a, b = ours[key], theirs[key]
        print(f"{label:28}{a:12.4f}{b:12.4f}{a / b:8.2f}x")
    print(f"{'peak RSS (MiB)':28}{ours.get('peak_rss_mib') or float('nan'):12.0f}{theirs.get('peak_rss_mib') or float('nan'):12.0f}")
    print(f"torch {theirs.get('torch')}")


if __name__ == "__main__":
    main()
