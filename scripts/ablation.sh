#!/usr/bin/env bash
# The SmolLM2 ablation of docs/ablation.md, for real (1-3 h on 2 CPU cores, by the machine's load).
# Each sweep is one axis varied around configs/ablation/base.yaml; EVs are reused across
# points whose extraction settings agree. Results: outputs/ablation/<axis>/sweep.md.
# Ordered by what matters most; stopped (Ctrl-C, SIGTERM), it resumes where it was when rerun.
# Run only some sweeps by naming them: bash scripts/ablation.sh site-mlp scope
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MLFLOW_DISABLE_TELEMETRY=true
ONLY=" $* "
E() {  # E SWEEP [sweep options...]: one sweep into outputs/ablation/SWEEP, unless other sweeps were named
  local name=$1; shift
  if [[ "$ONLY" != "  " && "$ONLY" != *" $name "* ]]; then return 0; fi
  .venv/bin/emoexp sweep --config configs/ablation/base.yaml --evs_dir outputs/ablation/evs \
    --sweep_dir "outputs/ablation/$name" "$@"
}
# 1. conditioning strategy used to elicit the emotional responses (site attn, all layers)
E conditioning --grid "conditioning=[system, user, prefill]"
# --- attempts to make anger and sadness steer (docs/ablation.md, "Anger and sadness") ---
# 2. contrastive pairs: the neutral opener differs from the emotional one only in the emotion word
E attempt-contrastive --grid 'neutral_text=["Honestly, this fills me with calm."]'
# 3. steer only the layers whose EV is reliable (split-half cosine at extraction)
E attempt-reliable --grid "generate.min_split_half=[0.3, 0.6]"
# 4. the EV on top of the emotional prompt (prompt_steered), next to each alone
E attempt-prompt-plus-ev --grid "generate.conditions=[[unsteered, steered, prompt, prompt_steered]]"
# 5. per-layer normalised doses with more extraction queries (16 per emotion)
E attempt-dose-16 --grid "extract.limit=[16]" --grid "generate.alpha_unit=[dose]" \
   --grid "generate.alphas=[[0, 0.05, 0.1, 0.2, 0.3]]"
# 6. PCA of the per-query paired differences instead of their mean (as repeng does)
E attempt-pca --grid "extract.method=[pca]"
# 7. the levers together: EVs from 32 queries per emotion, alone and steering only the reliable layers,
#    each also on top of the emotional prompt
E attempt-combined --grid "extract.limit=[32]" --grid "generate.min_split_half=[null, 0.3]" \
   --grid "generate.conditions=[[unsteered, steered, prompt, prompt_steered]]"
# 8. centred EVs: each minus the mean of the five (their shared emotional-vs-neutral part removed);
#    they are mostly shorter (on average 0.4-1.0x the uncentred norm per layer), hence the larger alphas
E attempt-centred --grid "extract.limit=[8, 32]" --grid "generate.centre=[true]" \
   --grid "generate.alphas=[[0, 1, 2, 4, 6]]" --grid "generate.conditions=[[unsteered, steered, prompt, prompt_steered]]"
# --- the other axes ---
# 9. alpha in relative-dose units (attn, all layers)
E dose --grid "generate.alpha_unit=[dose]" --grid "generate.alphas=[[0, 0.05, 0.1, 0.2, 0.4]]"
# 10. site and layers (raw alpha grids differ per site: their scales differ)
E site-residual --grid "extract.site=[residual]" \
   --grid "generate.layers=[null, [8, 9, 10, 11, 12, 13, 14, 15], [12]]" --grid "generate.alphas=[[0, 0.25, 0.5, 1, 2, 4]]"
E site-mlp --grid "extract.site=[mlp]" --grid "generate.alphas=[[0, 1, 2, 4]]"
E attn-layers --grid "generate.layers=[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]]" \
   --grid "generate.alphas=[[0, 1, 2, 4, 6]]"
# 11. token scope of the captured activations
E scope --grid "extract.scope=[all, last]"
# 12. positions: the authors' generated-positions edit
E positions --grid "generate.positions=[generated]"
