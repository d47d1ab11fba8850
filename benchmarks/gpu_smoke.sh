#!/bin/bash
# GPU check of the training side as it would run on a GPU node (issue 17 item 6), in one call of
# under ten minutes: the Megatron policy on CUDA in bf16 with none of the CPU adjustments (a ~1B
# Qwen2-shaped random model, one TP=1 train step: tokens/s and MFU; bf16 against fp32 logprobs on
# the same weights), then the unit tests that need no vLLM.
#
#   bash benchmarks/gpu_smoke.sh          # on the GPU machine (torch with CUDA, Python 3.12)
#   bash benchmarks/gpu_smoke.sh --dry    # here: the same steps on a tiny model on CPU
#
# The GPU machine has no registry: the wheels come along in build/gpu_wheels (ignored by git,
# ~5 MB), made on a machine with one by
#   pip download --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#       --only-binary :all: --no-deps -d build/gpu_wheels -r benchmarks/gpu_smoke_wheels.txt
# and installed here with --no-index, each only when it does not import already. No Transformer
# Engine (too large to carry): the policy runs Megatron's local layers (transformer_impl=auto).
set -euo pipefail
cd "$(dirname "$0")/.."
DRY="${1:-}"
PY="${PYTHON:-python}"
if [ "$DRY" != "--dry" ]; then
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device (use --dry to check the script on CPU)'"
    need=$("$PY" - <<'PY'
import importlib.util
mods = {"megatron-core": "megatron.core", "PyYAML": "yaml", "einops": "einops", "safetensors": "safetensors",
        "psutil": "psutil", "pytest": "pytest"}
print(" ".join(p for p, m in mods.items() if importlib.util.find_spec(m.split(".")[0]) is None))
PY
)
    if [ -n "$need" ]; then
        # pytest's own dependencies ride along with it
        extra=""; case " $need " in *" pytest "*) extra="pluggy iniconfig packaging";; esac
        "$PY" -m pip install --no-index --no-deps --find-links build/gpu_wheels $need $extra
    fi
    "$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
timeout 420 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/gpu_smoke.py $DRY
# in-process unit tests (no vLLM, no torchrun): losses, advantages, config, weight mapping, the async pipeline
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_algorithms.py tests/test_config.py \
    tests/test_weights_mapping.py tests/test_async_rollouts.py -k "not async_run"
