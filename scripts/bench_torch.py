#!/usr/bin/env python3
"""PyTorch + transformers reference benchmark for sift-lab's default model.

BertForSequenceClassification (num_labels=2) from sentence-transformers/all-MiniLM-L6-v2, with
the classifier head from torch.manual_seed(0) and every dropout probability set to 0 (so train
mode and eval mode compute the same function, like-for-like with a dropout-free step).

Inputs (--task):
  (default)  token ids from a seeded numpy RNG, uniform in [1000, 30000), [CLS]=101 first and
             [SEP]=102 last, no padding (attention mask all ones), token_type_ids zeros, labels
             seeded 0/1.
  mrpc       the first --batch-size examples of MRPC train (<--glue-dir>/MRPC/train.tsv, split on
             '\t' literally, label = column 0, sentences = columns 3 and 4), tokenized with the
             model's fast tokenizer: truncation="longest_first", max_length=--seq-len,
             padding="max_length" (so exactly batch x seq_len with real padding).

Arms (--arm, one per process so that peak RSS is per arm):
  (default)  forward_s + forward_backward_s + train_step_s of full fine-tuning (below).
  forward    forward_s only: eval-mode forward under torch.inference_mode().
  full       every parameter trainable, torch.optim.AdamW.
  sift       the reference SIFT scheme: targets = attention.self.{query,key,value}.weight and
             attention.output.dense.weight of every layer; k = max(1, floor(rate * numel)) flat
             indices per target drawn once from a seeded generator (--sift-rate, default 1 %;
             selection is not timed). Only the targets and the head (bert.pooler.*, classifier.*)
             require grad. Per step: forward, loss, backward (dense target grads appear), gather
             each target grad at its indices into the .grad of a k-sized `values` parameter, set
             the target .grad to None, AdamW over [values + head], then (no_grad) merge
             weight.view(-1).index_add_(0, idx, values) and reset values to 0 (values is an
             increment reset every step, as in the reference code, but merged before the next
             forward).
  lora       hand-written LoRA on the same targets: y = W x + b + (alpha/r) B (A x), A (r x in)
             kaiming-uniform(a=sqrt(5)), B (out x r) zero; base frozen; AdamW over all A, B + head.

After --warmup untimed repetitions, reports the median over --iters of
  forward_s           eval-mode forward under torch.inference_mode()
  forward_backward_s  (default arm only) train-mode forward + cross-entropy + backward over every
                      parameter (+ zero_grad)
  train_step_s        forward + cross-entropy + backward + AdamW step (+ merge for sift)
                      + zero_grad
and peak_rss_mib (getrusage ru_maxrss of this process). Training arms also report
trainable_params (elements the optimizer updates) and optimizer_state_bytes (bytes of every
AdamW state tensor after a step: exp_avg, exp_avg_sq and the 4-byte scalar `step` per
parameter tensor). Before timing, a training arm runs one checked step that fails if any
parameter outside the trainable set holds a .grad after backward (+ gather for sift).

Usage (from the repository root):
    HF_HUB_OFFLINE=1 bench-venv/bin/python scripts/bench_torch.py \
        --batch-size 32 --seq-len 128 --threads 2 --warmup 2 --iters 5 [--json]
    HF_HUB_OFFLINE=1 bench-venv/bin/python scripts/bench_torch.py --task mrpc --arm sift --json
The ATen parallel backend info and the trainable-parameter summary go to stderr.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("forward", "full", "sift", "lora")
TARGET_SUFFIXES = ("attention.self.query", "attention.self.key", "attention.self.value",
                   "attention.output.dense")
HEAD_PREFIXES = ("bert.pooler.", "classifier.")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                    help="hub repo id (resolved from the local HF cache) or a local directory")
    ap.add_argument("--task", choices=("mrpc",), default=None,
                    help="inputs from the first --batch-size MRPC train examples (default: random tokens)")
    ap.add_argument("--glue-dir", default=None,
                    help="folder holding MRPC/ (default: ../shared/data/glue, else /work/shared/data/glue)")
    ap.add_argument("--arm", choices=ARMS, default=None,
                    help="measure one arm only (default: forward + forward_backward + full train_step)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--sift-rate", type=float, default=0.01, help="fraction of each target tensor trained by sift")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
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
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer, BertForSequenceClassification  # noqa: E402


def resolve_model_dir(model):
    if os.path.isdir(model):
        return model
    from huggingface_hub import snapshot_download
    return snapshot_download(model, local_files_only=True)


def glue_dir():
    if args.glue_dir:
        return args.glue_dir
    for d in (os.path.join(ROOT, "..", "shared", "data", "glue"), "/work/shared/data/glue"):
        if os.path.isdir(d):
            return d
    sys.exit("no GLUE folder found: pass --glue-dir")


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_inputs(b, s):
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(1000, 30000, size=(b, s), dtype=np.int64)
    ids[:, 0] = 101
    ids[:, -1] = 102
    input_ids = torch.from_numpy(ids)
    attention_mask = torch.ones(b, s, dtype=torch.long)
    token_type_ids = torch.zeros(b, s, dtype=torch.long)
    labels = torch.from_numpy(rng.integers(0, 2, size=(b,), dtype=np.int64))
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids), labels


def mrpc_inputs(model_dir, b, s):
    path = os.path.join(glue_dir(), "MRPC", "train.tsv")
    a_texts, b_texts, labels = [], [], []
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops the byte-order mark
        header = f.readline().rstrip("\r\n").split("\t")
        if header[0] != "Quality":
            sys.exit(f"{path}: unexpected header {header!r}")
        for line in f:
            if len(labels) == b:
                break
            line = line.rstrip("\r\n")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) != 5:
                sys.exit(f"{path}: expected 5 columns, got {len(cols)}: {line[:80]!r}")
            labels.append(int(cols[0]))
            a_texts.append(cols[3])
            b_texts.append(cols[4])
    if len(labels) < b:
        sys.exit(f"{path}: only {len(labels)} examples, --batch-size {b}")
    tok = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    if not tok.is_fast:
        sys.exit("no fast tokenizer for this model")
    enc = tok(a_texts, b_texts, truncation="longest_first", max_length=s, padding="max_length",
              return_tensors="pt", return_token_type_ids=True, return_attention_mask=True)
    inputs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                  token_type_ids=enc["token_type_ids"])
    assert tuple(inputs["input_ids"].shape) == (b, s), inputs["input_ids"].shape
    return inputs, torch.tensor(labels, dtype=torch.long)


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * B (A x); base frozen, A kaiming-uniform(a=sqrt 5), B = 0."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)


def target_linears(model):
    """(name, nn.Linear) of every SIFT/LoRA target, in model order."""
    out = [(n, m) for n, m in model.named_modules() if n.endswith(TARGET_SUFFIXES)]
    assert out and all(isinstance(m, nn.Linear) for _, m in out), out
    return out


def is_head(name):
    return name.startswith(HEAD_PREFIXES)


def state_bytes(opt):
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
               if torch.is_tensor(t))


def setup_arm(model, arm):
    """Freeze/wrap the model for `arm`. Returns (optimizer, step_fn(check) -> names with .grad)."""
    adamw_kw = {"fused": True} if args.fused_adamw else {}
    for p in model.parameters():
        p.requires_grad_(False)

    if arm == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, **adamw_kw)
        trainable = {n for n, _ in model.named_parameters()}
        summary = f"full: {sum(p.numel() for p in model.parameters())} trainable"
        post_backward = after_step = None

    elif arm == "sift":
        gen = torch.Generator().manual_seed(args.seed)
        targets = []  # (weight, flat idx, values)
        for name, lin in target_linears(model):
            w = lin.weight
            w.requires_grad_(True)  # dense grad appears transiently in backward
            n = w.numel()
            k = max(1, math.floor(args.sift_rate * n))
            idx = torch.randperm(n, generator=gen)[:k].sort().values
            values = nn.Parameter(torch.zeros(k, dtype=w.dtype))
            targets.append((name, w, idx, values))
        head = [(n, p) for n, p in model.named_parameters() if is_head(n)]
        for _, p in head:
            p.requires_grad_(True)
        opt = torch.optim.AdamW([v for *_, v in targets] + [p for _, p in head], lr=args.lr, **adamw_kw)
        trainable = {n for n, _ in head}
        ks = [v.numel() for *_, v in targets]
        n_head = sum(p.numel() for _, p in head)
        summary = (f"sift: {len(ks)} target tensors x k={ks[0] if len(set(ks)) == 1 else ks} = {sum(ks)}"
                   f" + head {n_head} = {sum(ks) + n_head} trainable")

        def post_backward():
            for _, w, idx, values in targets:
                values.grad = w.grad.view(-1).index_select(0, idx)  # gather
                w.grad = None

        def after_step():
            with torch.no_grad():
                for _, w, idx, values in targets:
                    w.view(-1).index_add_(0, idx, values)  # merge before the next forward
                    values.zero_()

    elif arm == "lora":
        torch.manual_seed(args.seed + 1)
        r, alpha = args.lora_rank, args.lora_alpha
        for name, lin in target_linears(model):
            parent_name, attr = name.rsplit(".", 1)
            setattr(model.get_submodule(parent_name), attr, LoRALinear(lin, r, alpha))
        for n, p in model.named_parameters():
            if is_head(n) or n.endswith((".lora_A", ".lora_B")):
                p.requires_grad_(True)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr, **adamw_kw)
        n_lora = sum(p.numel() for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B")))
        n_head = sum(p.numel() for n, p in model.named_parameters() if is_head(n))
        n_targets = sum(1 for m in model.modules() if isinstance(m, LoRALinear))
        summary = (f"lora: r={r} alpha={alpha:g} on {n_targets} targets, A+B {n_lora}"
                   f" + head {n_head} = {n_lora + n_head} trainable")
        post_backward = after_step = None
    else:
        raise ValueError(arm)

    return opt, trainable, summary, post_backward, after_step


def main():
    torch.set_num_threads(args.threads)
    info = torch.__config__.parallel_info().strip().splitlines()
    print("\n".join(info[:8]), file=sys.stderr)

    model_dir = resolve_model_dir(args.model)
    b, s = args.batch_size, args.seq_len
    if args.task == "mrpc":
        inputs, labels = mrpc_inputs(model_dir, b, s)
    else:
        inputs, labels = random_inputs(b, s)

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

    result = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": attn_impl,
        "arm": args.arm,
        "task": args.task or "random",
        "threads": args.threads,
        "batch_size": b,
        "seq_len": s,
        "warmup": args.warmup,
        "iters": args.iters,
    }
    if args.task == "mrpc":
        result["real_tokens"] = int(inputs["attention_mask"].sum())

    rows = []
    if args.arm in (None, "forward"):
        model.eval()

        def forward():
            with torch.inference_mode():
                model(**inputs).logits

        result["forward_s"] = timed(forward, args.warmup, args.iters)
        rows.append(("forward", result["forward_s"]))

    if args.arm is None:
        # Today's behaviour: forward_backward + train_step of full fine-tuning.
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

        result["forward_backward_s"] = timed(forward_backward, args.warmup, args.iters)
        result["train_step_s"] = timed(train_step, args.warmup, args.iters)
        rows += [("forward+backward", result["forward_backward_s"]), ("train step", result["train_step_s"])]
        result["adamw"] = "fused" if args.fused_adamw else "default"

    elif args.arm != "forward":
        opt, trainable, summary, post_backward, after_step = setup_arm(model, args.arm)
        model.train()
        print(summary, file=sys.stderr)

        def train_step(check=False):
            logits = model(**inputs).logits
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            if post_backward is not None:
                post_backward()
            if check:
                with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
                stray = sorted(with_grad - trainable)
                if stray:
                    sys.exit(f"{args.arm}: parameters outside the trainable set hold a .grad: {stray[:5]} ...")
                missing = sorted(trainable - with_grad)
                if missing:
                    sys.exit(f"{args.arm}: trainable parameters without a .grad: {missing[:5]} ...")
                for group in opt.param_groups:
                    for p in group["params"]:
                        assert p.grad is not None and p.grad.shape == p.shape
            opt.step()
            if after_step is not None:
                after_step()
            opt.zero_grad(set_to_none=True)
            if check:
                return loss.item()

        loss0 = train_step(check=True)  # checked step (counts as warmup)
        n_trainable = sum(p.numel() for g in opt.param_groups for p in g["params"])
        result.update({
            "adamw": "fused" if args.fused_adamw else "default",
            "trainable_params": n_trainable,
            "optimizer_state_bytes": state_bytes(opt),
            "model_params_with_grad": len(trainable),
            "frozen_with_grad": 0,  # checked above
            "first_loss": loss0,
        })
        if args.arm == "sift":
            result["sift_rate"] = args.sift_rate
        if args.arm == "lora":
            result["lora_rank"], result["lora_alpha"] = args.lora_rank, args.lora_alpha
        result["train_step_s"] = timed(train_step, max(0, args.warmup - 1), args.iters)
        rows.append((f"{args.arm} train step", result["train_step_s"]))

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    result["peak_rss_mib"] = round(peak_rss_mib, 1)

    if args.json:
        print(json.dumps(result))
    else:
        print(f"pytorch {torch.__version__} / transformers {transformers.__version__} "
              f"(attention: {attn_impl}, AdamW: {'fused' if args.fused_adamw else 'default'}), {args.threads} threads, "
              f"task {result['task']}, arm {args.arm or 'default'}, batch {b} x seq {s}, "
              f"median of {args.iters} after {args.warmup} warmup")
        print(f"{'measure':<20}{'seconds':>10}{'examples/s':>12}")
        for name, sec in rows:
            print(f"{name:<20}{sec:>10.4f}{b / sec:>12.1f}")
        if "trainable_params" in result:
            print(f"trainable params {result['trainable_params']}, AdamW state {result['optimizer_state_bytes']} bytes")
        print(f"peak RSS {peak_rss_mib:.1f} MiB")


if __name__ == "__main__":
    main()
