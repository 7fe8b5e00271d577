#!/usr/bin/env python3
"""Side-by-side benchmark: sift-lab (candle) vs PyTorch + transformers, same machine and shapes.

Runs `sift-lab bench --json` and `scripts/bench_torch.py --json` (in the bench venv, see
scripts/requirements-bench.txt) with the same thread count, batch and sequence length, and
prints seconds per forward batch and per training step with the ratio sift-lab / PyTorch.

    python3 scripts/bench_compare.py --threads 2 --batch-size 32 --seq-len 128

With --arms (any of forward,full,sift,lora), every arm runs in its own process on each side
(so peak RSS is per arm):
    target/release/sift-lab --threads T bench --arm ARM [--task mrpc] --batch-size B --seq-len L --iters N --json
    bench-venv/bin/python scripts/bench_torch.py --threads T --arm ARM [--task mrpc] ... --json
and one table follows (s/step = forward_s for the forward arm, train_step_s otherwise), then the
within-framework ratios the project targets: SIFT step / full step, and SIFT (optimizer + gradient
state) / full's, with gradient state = 4 bytes x trainable_params.

    python3 scripts/bench_compare.py --task mrpc --arms forward,full,sift,lora --iters 3

The decoder (issue 13's shapes: SmolLM2, batch 8 x 256, 2 threads; generation of 256 tokens):
    python3 scripts/bench_compare.py --decoder --arms full,sift,lora,generate --batch-size 8 --seq-len 256 --iters 3

If one side fails (e.g. a sift-lab binary without --arm), its columns show n/a and its stderr
tail is printed; the other side still runs.
"""
import argparse
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("forward", "full", "sift", "lora")
DECODER_ARMS = ("full", "sift", "lora", "generate")


def run_json(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    sys.stderr.write(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def try_run_json(cmd, env, label):
    """run_json, but a failure gives None (and the command + stderr tail on stderr)."""
    print(f"[{label}] {' '.join(cmd)}", file=sys.stderr, flush=True)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    except OSError as e:
        print(f"[{label}] failed: {e}", file=sys.stderr)
        return None
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-8:])
        print(f"[{label}] exit {out.returncode}:\n{tail}", file=sys.stderr)
        return None
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as e:
        print(f"[{label}] no JSON on the last stdout line: {e}", file=sys.stderr)
        return None


def fmt(x, spec, width):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return f"{'n/a':>{width}}"
    return f"{x:{width}{spec}}"


def step_s(res, arm):
    """Seconds per step, or for generation seconds per new token."""
    if res is None:
        return None
    if arm == "generate":
        rate = res.get("generate_tokens_per_s")
        return 1.0 / rate if rate else None
    return res.get("forward_s" if arm == "forward" else "train_step_s")


def state_bytes(res):
    """AdamW state + gradient state (4 bytes x trainable_params), or None."""
    if res is None or res.get("optimizer_state_bytes") is None or res.get("trainable_params") is None:
        return None
    return res["optimizer_state_bytes"] + 4 * res["trainable_params"]


def ratio(a, b):
    return a / b if a is not None and b else None


def compare_arms(args, env, shape):
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    allowed = DECODER_ARMS if args.decoder else ARMS
    bad = [a for a in arms if a not in allowed]
    if bad:
        sys.exit(f"--arms: unknown {bad}; choose from {','.join(allowed)}")
    task = ["--task", args.task] if args.task else []
    ours_extra = ["--decoder", "--lora-rank", str(args.lora_rank)] if args.decoder else []
    theirs_script = ["bench_torch_decoder.py", "--lora-rank", str(args.lora_rank)] if args.decoder else ["bench_torch.py"]
    ours, theirs = {}, {}
    for arm in arms:
        ours[arm] = try_run_json([os.path.join(ROOT, "target", "release", "sift-lab"), "--threads", str(args.threads),
                                  "bench", *ours_extra, "--arm", arm, *task, *shape, "--json"], env, f"sift-lab {arm}")
        theirs[arm] = try_run_json([args.python, os.path.join(ROOT, "scripts", theirs_script[0]), *theirs_script[1:],
                                    "--threads", str(args.threads), "--arm", arm, *task, *shape, "--json"], env,
                                   f"pytorch {arm}")
    if args.decoder:
        print(f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32), batch {args.batch_size} x {args.seq_len} tokens "
              f"(generate: {args.seq_len} new tokens after 32, s/step = s per new token), SIFT 1 %, LoRA r = {args.lora_rank} "
              f"on q,k,v,o,gate,up,down, {args.threads} threads, median of {args.iters}, one process per arm and framework")
    else:
        print(f"MiniLM-L6 (all-MiniLM-L6-v2 + 2-way head), task {args.task or 'random tokens'}, batch {args.batch_size} x "
              f"{args.seq_len} tokens, {args.threads} threads, median of {args.iters}, one process per arm and framework")
    print(f"{'arm':<9}{'sift-lab s/step':>16}{'PyTorch s/step':>16}{'ratio':>8}"
          f"{'sift-lab RSS MiB':>18}{'PyTorch RSS MiB':>17}")
    for arm in arms:
        a, b = step_s(ours[arm], arm), step_s(theirs[arm], arm)
        r = ratio(a, b)
        print(f"{arm:<9}{fmt(a, '.4f', 16)}{fmt(b, '.4f', 16)}{fmt(r, '.2f', 7)}{'x' if r is not None else ' '}"
              f"{fmt((ours[arm] or {}).get('peak_rss_mib'), '.0f', 18)}{fmt((theirs[arm] or {}).get('peak_rss_mib'), '.0f', 17)}")
    if "sift" in arms and "full" in arms:
        print()
        print(f"{'within-framework ratio (SIFT / full)':<44}{'sift-lab':>10}{'PyTorch':>10}")
        rows = [("train step time", lambda res, arm: step_s(res, arm)),
                ("optimizer + gradient state bytes", lambda res, arm: state_bytes(res))]
        for label, get in rows:
            vals = [ratio(get(side["sift"], "sift"), get(side["full"], "full")) for side in (ours, theirs)]
            print(f"{label:<44}" + "".join(fmt(v, '.4f', 10) for v in vals))
        for name, side in (("sift-lab", ours), ("PyTorch", theirs)):
            parts = []
            for arm in ("full", "sift"):
                res = side[arm]
                if res is not None and res.get("trainable_params") is not None:
                    parts.append(f"{arm}: {res['trainable_params']} trainable, AdamW state "
                                 f"{res.get('optimizer_state_bytes')} B + grads {4 * res['trainable_params']} B")
            if parts:
                print(f"  {name}: " + "; ".join(parts))
    for name, side in (("sift-lab", ours), ("PyTorch", theirs)):
        missing = [a for a in arms if side[a] is None]
        if missing:
            print(f"{name}: no result for {','.join(missing)} (see stderr)")
    torch_v = next((r.get("torch") for r in theirs.values() if r), None)
    if torch_v:
        print(f"torch {torch_v}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--task", choices=("mrpc",), default=None,
                   help="inputs from the first --batch-size MRPC train examples (default: random tokens)")
    p.add_argument("--arms", default=None,
                   help="comma-separated arms among forward,full,sift,lora, one process each "
                        "(default: one forward/forward+backward/full-train-step run per framework)")
    p.add_argument("--decoder", action="store_true",
                   help="the default decoder (SmolLM2) with --arms among full,sift,lora,generate "
                        "(scripts/bench_torch_decoder.py on the PyTorch side)")
    p.add_argument("--lora-rank", type=int, default=4, help="LoRA rank of the decoder arms")
    p.add_argument("--no-build", action="store_true", help="skip `cargo build --release`")
    p.add_argument("--python", default=os.path.join(ROOT, "bench-venv", "bin", "python"),
                   help="python with torch + transformers (default: ./bench-venv)")
    args = p.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    shape = ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--iters", str(args.iters)]
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], check=True, cwd=ROOT)
    if args.arms is not None:
        compare_arms(args, env, shape)
        return
    task = ["--task", args.task] if args.task else []
    ours = run_json([os.path.join(ROOT, "target", "release", "sift-lab"), "--threads", str(args.threads), "bench", "--json", *task, *shape], env)
    theirs = run_json([args.python, os.path.join(ROOT, "scripts", "bench_torch.py"), "--threads", str(args.threads), "--json", *task, *shape], env)
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
