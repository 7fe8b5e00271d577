#!/usr/bin/env bash
# Every paper figure and table sift-lab reproduces, from one command:
#   bash scripts/reproduce.sh            # quick: tiny subsets of the real data, minutes on 2 cores
#   bash scripts/reproduce.sh cpu        # the committed scale: about 8 h on 2 cores, resumable
#   bash scripts/reproduce.sh paper      # the paper's hyperparameters (Appendix B): for a GPU
# Results go to results/PRESET/ (cpu: results/), figures and figures/README.md to figures/PRESET/
# (cpu: figures/). Rerunning continues where a stopped run left off (--resume).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET="${1:-quick}"
case "$PRESET" in
  quick|paper) RESULTS="results/$PRESET"; FIGURES="figures/$PRESET" ;;
  cpu) RESULTS="results"; FIGURES="figures" ;;
  *) echo "usage: $0 [quick|cpu|paper]" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
bash scripts/setup-model.sh
cargo build --release --quiet
BIN=target/release/sift-lab
resume() { [ -e "$1/results.parquet" ] && echo --resume || true; }
# Table 4 and Fig. 6 with the random-selection arm beside SIFT; Table 2 as the paper has it.
for item in table4-modules fig6-budget table2-glue; do
  random=--random; [ "$item" = table2-glue ] && random=
  "$BIN" ablate "analyses/$item.toml" --preset "$PRESET" $random --out "$RESULTS/$item" $(resume "$RESULTS/$item")
done
if [ "$PRESET" = quick ]; then
  # Fig. 2, 3, 4 at a toy scale (the committed ones come from analyses/fig2-*, fig3-*, fig4-*).
  [ -e "$RESULTS/grad-stats-mrpc/hist.parquet" ] || "$BIN" grad-stats --task mrpc --batches 4 --batch-size 8 --max-len 64 --out "$RESULTS/grad-stats-mrpc"
  [ -e "$RESULTS/landscape-1d-rte/landscape.parquet" ] || "$BIN" landscape --task rte --dims 1 --alpha=-0.5:1.5:9 --eval-examples 32 --max-len 64 --out "$RESULTS/landscape-1d-rte"
fi
"$BIN" figures --results "$RESULTS" --out "$FIGURES"
echo "figures and tables: $FIGURES/README.md"
