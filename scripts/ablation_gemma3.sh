#!/usr/bin/env bash
# The short Gemma 3 270M ablation of docs/families.md (about 40 min on 2 CPU cores; needs
# bash scripts/install.sh --gemma). One axis at a time around configs/ablation/gemma3.yaml;
# EVs are reused across points whose extraction settings agree. Results: outputs/ablation-gemma3/<axis>/sweep.md,
# then: .venv/bin/python scripts/ablation_report.py --sweeps outputs/ablation-gemma3 --doc docs/families.md --marker ablation-gemma3
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MLFLOW_DISABLE_TELEMETRY=true
E=".venv/bin/emoexp sweep --config configs/ablation/gemma3.yaml --evs_dir outputs/ablation-gemma3/evs"
# 1. which third of the 18 layers carries the emotion (site attn; all layers is the base point)
$E --sweep_dir outputs/ablation-gemma3/attn-layers \
   --grid "generate.layers=[null, [0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17]]" \
   --grid "generate.alphas=[[0, 1, 2, 4]]"
# 2. the other sites: the MLP output, and the residual stream at the middle third (relative doses)
$E --sweep_dir outputs/ablation-gemma3/site-mlp --grid "extract.site=[mlp]"
$E --sweep_dir outputs/ablation-gemma3/site-residual --grid "extract.site=[residual]" \
   --grid "generate.layers=[[6, 7, 8, 9, 10, 11]]" --grid "generate.alpha_unit=[dose]" \
   --grid "generate.alphas=[[0, 0.05, 0.1, 0.2]]"
