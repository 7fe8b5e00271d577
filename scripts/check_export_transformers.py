#!/usr/bin/env python3
"""Loads a checkpoint written by `sift-lab train --export-hf DIR` with transformers'
AutoModelForSequenceClassification and prints its mean loss and accuracy on the first N dev
examples of RTE or MRPC, to compare with the run's summary.json (same --eval-limit, --max-len).

    bench-venv/bin/python scripts/check_export_transformers.py DIR --task rte --limit 32 --max-len 64
"""
import argparse
import json

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

LAYOUT = {  # text a, text b, label column, label map (SPEC.md)
    "rte": ("RTE", 1, 2, 3, {"entailment": 0, "not_entailment": 1}),
    "mrpc": ("MRPC", 3, 4, 0, {"0": 0, "1": 1}),
}

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("checkpoint")
p.add_argument("--task", default="rte", choices=sorted(LAYOUT))
p.add_argument("--limit", type=int, default=None)
p.add_argument("--max-len", type=int, default=128)
p.add_argument("--glue-dir", default="../shared/data/glue")
args = p.parse_args()

folder, a, b, y, labels_of = LAYOUT[args.task]
with open(f"{args.glue_dir}/{folder}/dev.tsv", encoding="utf-8-sig") as f:
    rows = [line.rstrip("\n").split("\t") for line in f][1:]
rows = rows[: args.limit] if args.limit else rows
model = AutoModelForSequenceClassification.from_pretrained(args.checkpoint).eval()
tok = AutoTokenizer.from_pretrained(args.checkpoint)
labels = torch.tensor([labels_of[r[y]] for r in rows])
losses, correct = [], 0
for i in range(0, len(rows), 64):
    chunk = rows[i : i + 64]
    enc = tok([r[a] for r in chunk], [r[b] for r in chunk], truncation="longest_first",
              max_length=args.max_len, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    target = labels[i : i + 64]
    losses.append(torch.nn.functional.cross_entropy(logits, target, reduction="sum").item())
    correct += (logits.argmax(-1) == target).sum().item()
print(json.dumps({"n_examples": len(rows), "dev_loss": sum(losses) / len(rows), "accuracy": correct / len(rows)}))
