#!/bin/bash
# GPU check of the Nemotron-H path (not run on the CPU machines): the pure-torch chunked SSD scan
# against mamba_ssm's own Triton kernel (time, output and gradient differences), then the Megatron
# hybrid's forward/backward on CUDA with those kernels (tiny and small sizes).
#
#   MAMBA_SDIST=/path/mamba_ssm-2.3.2.post1.tar.gz bash benchmarks/gpu_mamba.sh
#
# Needs torch with CUDA, Triton, transformers and megatron-core importable. mamba-ssm is installed
# from MAMBA_SDIST when it does not import; its Mamba-2 scan and gated norm are Triton, so
# MAMBA_SKIP_CUDA_BUILD=TRUE compiles nothing (causal_conv1d is optional: Megatron falls back to
# nn.Conv1d). MCORE_WHEEL, if given, installs megatron-core the same way (--no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
if [ -n "${MCORE_WHEEL:-}" ] && ! python -c "import megatron.core" 2>/dev/null; then
    pip install --no-deps "$MCORE_WHEEL"
fi
if ! python -c "import mamba_ssm" 2>/dev/null; then
    : "${MAMBA_SDIST:?mamba_ssm does not import; set MAMBA_SDIST to the mamba-ssm sdist (216 KB)}"
    MAMBA_SKIP_CUDA_BUILD=TRUE pip install --no-build-isolation --no-deps "$MAMBA_SDIST"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python benchmarks/hybrid_fwd_bwd.py --size tiny --batch 2 --seq 128
python benchmarks/hybrid_fwd_bwd.py --size small --batch 2 --seq 2048
