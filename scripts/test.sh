#!/usr/bin/env bash
# Install everything (venv, pip packages, Debian's Slurm and Chromium) and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --slurm --browser --bench
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MLFLOW_DISABLE_TELEMETRY=true
export EMOEXP_CACHE=${EMOEXP_CACHE:-$PWD/.cache/emoexp}
export HF_HOME=${HF_HOME:-$PWD/.cache/hf}
started_slurm=0
if bash scripts/slurm-cluster.sh start; then started_slurm=1; fi
trap '[ "$started_slurm" = 1 ] && bash scripts/slurm-cluster.sh stop || true' EXIT
set +e
.venv/bin/python -u -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
