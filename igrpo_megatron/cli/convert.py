"""igrpo-convert: Hugging Face folder <-> Megatron distributed checkpoint.

    igrpo-convert from-hf --hf HF_DIR --out CKPT_DIR [--tp T --pp P] [--dtype fp32|bf16|fp16] [--force]
    igrpo-convert to-hf --ckpt CKPT_DIR --out HF_DIR [--base-hf HF_DIR] [--dtype ...]
                        [--max-shard-size 2GB] [--force]
    igrpo-convert verify --ckpt CKPT_DIR

Both run in one plain process (no torchrun, no GPU). The checkpoint stores global tensors and
reshards on load, so training loads it at any TP x PP the model's shape allows; from-hf's --tp and
--pp check the layout you will train at against the model (heads, key/value heads, layers) now.
to-hf accepts a from-hf checkpoint or a training checkpoint (root folder or one ``iter_*``), and
checks every file's checksum before it reads one; verify does only that check (no model is built).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys

from tqdm import tqdm

from igrpo_megatron.cli.runner import run_cli
from igrpo_megatron.errors import UserError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.I)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"2GB"``, ``"500MiB"``, ``"1048576"`` -> bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 2GB, 500MB or a byte count")
    return int(float(m.group(1)) * _UNITS[m.group(2)[:1].upper()])


def _prepare_output(path: str, force: bool) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        if not force:
            raise FileExistsError(f"output {path} exists and is not empty; choose another --out or pass --force "
                                  f"to replace its contents")
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(path, exist_ok=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="igrpo-convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dtypes = ["fp32", "bf16", "fp16"]

    p = sub.add_parser("from-hf", help="HF safetensors folder -> Megatron dist checkpoint (loads at any TP x PP)")
    p.add_argument("--hf", required=True, help="HF model folder or hub name (config.json, *.safetensors, tokenizer)")
    p.add_argument("--out", required=True, help="checkpoint folder to create")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size training will use (checked, default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size training will use (checked, default 1)")
    p.add_argument("--dtype", choices=dtypes, help="parameter dtype (default: the HF weights' dtype)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = sub.add_parser("to-hf", help="Megatron dist checkpoint -> HF folder for transformers / vLLM")
    p.add_argument("--ckpt", required=True, help="checkpoint root (uses its latest) or one iter_* folder")
    p.add_argument("--out", required=True, help="HF folder to create")
    p.add_argument("--base-hf", help="HF folder for config.json / tokenizer (default: recorded in the checkpoint)")
    p.add_argument("--dtype", choices=dtypes, help="dtype of the written weights (default: the checkpoint's)")
    p.add_argument("--max-shard-size", type=parse_size, default="2GB", help="largest safetensors shard (default 2GB)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = sub.add_parser("verify", help="check a checkpoint's files against their saved checksums (loads nothing)")
    p.add_argument("--ckpt", required=True, help="checkpoint root (uses its latest) or one iter_* folder")
    return parser


def _convert(args: argparse.Namespace) -> str:
    from igrpo_megatron.weights.convert import checkpoint_to_hf, hf_to_checkpoint

    if args.command == "from-hf":
        with tqdm(desc="from-hf: loading HF weights", unit="tensor") as bar:
            path = hf_to_checkpoint(args.hf, args.out, dtype=args.dtype, progress=bar, tp=args.tp, pp=args.pp)
        return f"wrote Megatron checkpoint {path} (loads at any TP x PP the model allows, TP={args.tp} x PP={args.pp} checked)"
    with tqdm(desc="to-hf: writing safetensors", unit="B", unit_scale=True, unit_divisor=1024) as bar:
        index = checkpoint_to_hf(args.ckpt, args.out, base_hf=args.base_hf, dtype=args.dtype,
                                 max_shard_bytes=args.max_shard_size, progress=bar)
    shards = len(set(index["weight_map"].values()))
    return f"wrote HF folder {args.out} ({len(index['weight_map'])} tensors in {shards} shard(s))"


def run(args: argparse.Namespace) -> str:
    """Check the inputs, prepare ``--out``, convert; a failed conversion leaves no half-written output."""
    from igrpo_megatron.weights.hub import resolve_model

    if args.command == "from-hf":
        args.hf = resolve_model(args.hf, "--hf")
    elif not os.path.exists(args.ckpt):
        raise FileNotFoundError(f"--ckpt {args.ckpt}: no such folder")
    if getattr(args, "base_hf", None):
        args.base_hf = resolve_model(args.base_hf, "--base-hf")
    if args.command == "verify":
        from igrpo_megatron.checkpoint import verify_checkpoint

        folder, files, size = verify_checkpoint(args.ckpt)
        return f"{folder}: {files} files ({size / 2**20:.1f} MiB) match their checksums; its pickles are safe to load"
    _prepare_output(args.out, args.force)
    try:
        return _convert(args)
    except BaseException:
        shutil.rmtree(args.out, ignore_errors=True)
        raise


def main(argv=None) -> int:
    return run_cli("igrpo-convert", _main, argv)


def _main(argv) -> int:
    from igrpo_megatron.weights.mapping import WeightMappingError

    args = build_parser().parse_args(argv)
    try:
        print(run(args))
    except (WeightMappingError, FileNotFoundError, FileExistsError) as e:  # the user's files, not our bug
        raise UserError(f"{args.command}: {e}") from e
    return 0


if __name__ == "__main__":
    sys.exit(main())
