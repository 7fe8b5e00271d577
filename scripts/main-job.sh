#!/usr/bin/env bash
# A first check on the default model and data (the README's main job is scripts/reproduce.sh):
# installs the default model into the Hugging Face cache if it is missing, builds sift-lab, and
# evaluates the pretrained MiniLM (with a seeded classification head) on RTE dev.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
bash scripts/setup-model.sh
cargo build --release
./target/release/sift-lab eval --task rte --split dev --predictions runs/main/rte-dev-predictions.parquet
