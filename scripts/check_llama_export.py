#!/usr/bin/env python3
"""Check a decoder exported by `sift-lab train --instructions ... --export-hf DIR` in transformers.

Loads DIR with AutoModelForCausalLM / AutoTokenizer (float32, 2 threads), rebuilds the held-out
records the run evaluated (summary.json: held_out_records_used, config.max_len) with the Alpaca
template (prompt ids, then response ids + EOS, truncated to max_len), and computes the mean
cross-entropy of the response tokens. Prints it beside the run's last held-out loss and exits 1
if they differ by more than 1e-4.

Usage: bench-venv/bin/python scripts/check_llama_export.py RUN_DIR [EXPORT_DIR]
"""

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "2")
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def prompt(r):
    if r["input"].strip():
        return ("Below is an instruction that describes a task, paired with an input that provides "
                "further context. Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{r['instruction']}\n\n### Input:\n{r['input']}\n\n### Response:\n")
    return ("Below is an instruction that describes a task. Write a response that appropriately "
            f"completes the request.\n\n### Instruction:\n{r['instruction']}\n\n### Response:\n")


def main():
    run = sys.argv[1]
    export = sys.argv[2] if len(sys.argv) > 2 else os.path.join(run, "hf")
    summary = json.load(open(os.path.join(run, "summary.json")))
    config = summary["config"]
    records = json.load(open(config["instructions"]))
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    eos = model.config.eos_token_id
    total, count = 0.0, 0
    with torch.no_grad():
        for i in summary["held_out_records_used"]:
            r = records[i]
            p = tok(prompt(r), add_special_tokens=True)["input_ids"]
            ids = (p + tok(r["output"], add_special_tokens=False)["input_ids"] + [eos])[: config["max_len"]]
            logits = model(torch.tensor([ids])).logits[0]
            lp = torch.log_softmax(logits.double(), -1)
            for t in range(len(p), len(ids)):
                total -= lp[t - 1, ids[t]].item()
                count += 1
    ours = summary["epochs"][-1]["held_out_loss"]
    theirs = total / count
    print(f"held-out loss: sift-lab {ours:.6f}, transformers {theirs:.6f} ({count} tokens)")
    sys.exit(0 if abs(ours - theirs) < 1e-4 else 1)


if __name__ == "__main__":
    main()
