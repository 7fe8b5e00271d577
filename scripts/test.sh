#!/usr/bin/env bash
# The test command (README, and .ci/run calls exactly this): installs the default model into the
# Hugging Face cache if it is missing, then runs the whole suite on an optimised build.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
bash scripts/setup-model.sh
cargo test --release "$@"
