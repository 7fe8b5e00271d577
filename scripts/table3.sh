#!/usr/bin/env bash
# Paper Table 3 at the scale of the default decoder (SmolLM2-135M-Instruct) on 2 CPU cores:
# full fine-tuning, LoRA and SIFT on the 1,000 shared Alpaca instructions (900 trained, 100 held
# out, seed 42), each then scored zero-shot on the four shared MMLU subjects and by HumanEval
# greedy pass@1 (chat prompt, 256 new tokens), beside the base model's results/mmlu-smollm2-base
# and results/humaneval-smollm2-base-chat.
#   bash scripts/table3.sh            # all three methods
#   bash scripts/table3.sh sift       # one of full | lora | sift
# Rerunning continues where a stopped run left off: training from its last finished epoch
# (--resume), HumanEval from its last finished sample; finished steps are skipped.
#
# Settings (the paper's Appendix B, Table 6, where 2 cores allow): SIFT on W_q,k,v,o at the
# paper's 7B rate, 5 % of each tensor (1,327,104 entries); LoRA on the same tensors at the rank
# whose count is closest, r = 12 (1,382,400, +4.2 %), alpha = 2r as the paper's r = 128,
# alpha = 256; learning rates full 2e-5, LoRA and SIFT 2e-4; one epoch (the paper: 3) of batch 8
# (the paper: 128) at most 256 tokens per record. About 15-25 min of training per method on 2
# quiet cores, MMLU a few minutes and HumanEval about 20 min per model.
# Merged exports (--export-hf) go to runs/ (model weights are never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
BIN="${BIN:-target/release/sift-lab}"
ALPACA="${ALPACA:-../shared/data/alpaca/alpaca_data_1k.json}"
MMLU="${MMLU:-../shared/data/mmlu}"
METHODS="${1:-full lora sift}"

base="results/mmlu-smollm2-base"
if [ ! -e "$base/predictions.parquet" ]; then
  mkdir -p "$base"
  "$BIN" eval --mmlu "$MMLU" --predictions "$base/predictions.parquet" | tee "$base/mmlu.txt"
fi

for name in $METHODS; do
  case "$name" in
    full) method=(--method full --lr 2e-5) ;;
    lora) method=(--method lora --lora-rank 12 --lora-alpha 24 --lr 2e-4) ;;
    sift) method=(--method sift --rate 0.05 --lr 2e-4) ;;
    *) echo "unknown method '$name': use full, lora or sift" >&2; exit 2 ;;
  esac
  out="results/table3-smollm2-$name"
  export_dir="runs/table3-smollm2-$name-hf"
  if ! grep -qs '"status": "completed"' "$out/summary.json"; then
    resume=(); [ -d "$out/state" ] && resume=(--resume)
    "$BIN" train --instructions "$ALPACA" --modules q,k,v,o "${method[@]}" --epochs 1 \
      --batch-size 8 --max-len 256 --seed 42 --export-hf "$export_dir" --out "$out" "${resume[@]}"
  fi
  if [ ! -e "$export_dir/model.safetensors" ]; then
    echo "$export_dir is missing (exports are not committed): move $out aside and rerun to train it again" >&2
    exit 1
  fi
  if [ ! -e "$out/mmlu-predictions.parquet" ]; then
    "$BIN" eval --mmlu "$MMLU" --checkpoint "$export_dir" --predictions "$out/mmlu-predictions.parquet" \
      | tee "$out/mmlu.txt"
  fi
  he="$out/humaneval-chat"
  if ! grep -qs '"status": "completed"' "$he/summary.json"; then
    resume=(); [ -e "$he/samples.parquet" ] && resume=(--resume)
    "$BIN" eval --humaneval --prompt chat --max-new-tokens 256 --checkpoint "$export_dir" \
      --out "$he" "${resume[@]}"
  fi
done
