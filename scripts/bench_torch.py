#!/usr/bin/env python3
"""PyTorch + transformers reference benchmark for sift-lab's default model.

BertForSequenceClassification (num_labels=2) from sentence-transformers/all-MiniLM-L6-v2, with
the classifier head from torch.manual_seed(0) and every dropout probability set to 0 (so train
mode and eval mode compute the same function, like-for-like with a dropout-free step).

Inputs: token ids from a seeded numpy RNG, uniform in [1000, 30000), [CLS]=101 first and
[SEP]=102 last, no padding (attention mask all ones), token_type_ids zeros, labels seeded 0/1.

After --warmup untimed repetitions, reports the median over --iters of
  forward_s           eval-mode forward under torch.inference_mode()
  forward_backward_s  train-mode forward + cross-entropy + backward over every parameter
                      (+ zero_grad)
  train_step_s        the same + torch.optim.AdamW step (+ zero_grad)
and peak_rss_mib (getrusage ru_maxrss of this process).

Usage (from the repository root):
    HF_HUB_OFFLINE=1 bench-venv/bin/python scripts/bench_torch.py \
        --batch-size 32 --seq-len 128 --threads 2 --warmup 2 --iters 5 [--json]
The ATen parallel backend info goes to stderr.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                    help="hub repo id (resolved from the local HF cache) or a local directory")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--fused-adamw", action="store_true",
                    help="use AdamW(fused=True) instead of the default (foreach) implementation")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return ap.parse_args()


args = parse_args()
# Thread counts must be in the environment before torch (and its OpenMP/MKL) is loaded.
os.environ["OMP_NUM_THREADS"] = str(args.threads)
os.environ["MKL_NUM_THREADS"] = str(args.threads)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import BertForSequenceClassification  # noqa: E402


def resolve_model_dir(model):
    if os.path.isdir(model):
        return model
    from huggingface_hub import snapshot_download
    return snapshot_download(model, local_files_only=True)


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    torch.set_num_threads(args.threads)
    info = torch.__config__.parallel_info().strip().splitlines()
    print("\n".join(info[:8]), file=sys.stderr)

    model_dir = resolve_model_dir(args.model)
    torch.manual_seed(args.seed)
    model = BertForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        torch_dtype=torch.float32,
    )
    attn_impl = getattr(model.config, "_attn_implementation", None)

    b, s = args.batch_size, args.seq_len
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(1000, 30000, size=(b, s), dtype=np.int64)
    ids[:, 0] = 101
    ids[:, -1] = 102
    input_ids = torch.from_numpy(ids)
    attention_mask = torch.ones(b, s, dtype=torch.long)
    token_type_ids = torch.zeros(b, s, dtype=torch.long)
    labels = torch.from_numpy(rng.integers(0, 2, size=(b,), dtype=np.int64))
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    # (a) eval-mode forward
    model.eval()

    def forward():
        with torch.inference_mode():
            model(**inputs).logits

    forward_s = timed(forward, args.warmup, args.iters)

    # (b)/(c) train mode (dropout probs are 0, so only the autograd bookkeeping differs)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, **({"fused": True} if args.fused_adamw else {}))

    def forward_backward():
        logits = model(**inputs).logits
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        opt.zero_grad(set_to_none=True)

    def train_step():
        logits = model(**inputs).logits
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    forward_backward_s = timed(forward_backward, args.warmup, args.iters)
    train_step_s = timed(train_step, args.warmup, args.iters)

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

    result = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": attn_impl,
        "threads": args.threads,
        "batch_size": b,
        "seq_len": s,
        "warmup": args.warmup,
        "iters": args.iters,
        "adamw": "fused" if args.fused_adamw else "default",
        "forward_s": forward_s,
        "forward_backward_s": forward_backward_s,
        "train_step_s": train_step_s,
        "peak_rss_mib": round(peak_rss_mib, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"pytorch {torch.__version__} / transformers {transformers.__version__} "
              f"(attention: {attn_impl}, AdamW: {'fused' if args.fused_adamw else 'default'}), {args.threads} threads, batch {b} x seq {s}, "
              f"median of {args.iters} after {args.warmup} warmup")
        print(f"{'measure':<20}{'seconds':>10}{'examples/s':>12}")
        for name, sec in (("forward", forward_s), ("forward+backward", forward_backward_s),
                          ("train step", train_step_s)):
            print(f"{name:<20}{sec:>10.4f}{b / sec:>12.1f}")
        print(f"peak RSS {peak_rss_mib:.1f} MiB")


if __name__ == "__main__":
    main()
