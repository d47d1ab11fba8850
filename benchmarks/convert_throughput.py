"""to-hf conversion throughput next to a plain copy of the same bytes, in one run.

Builds a wide random Qwen2 (>= 1 GB of fp32 weights), converts it with from-hf, then times
``checkpoint_to_hf`` (build the TP1 model, load the dist checkpoint, stream-export, write sharded
safetensors) against reading and writing the HF safetensors bytes with plain file I/O. Both see
files the same run just wrote (warm page cache). All temp files are removed at the end.

    OMP_NUM_THREADS=1 python benchmarks/convert_throughput.py [--layers 14] [--repeats 2] [--tmp DIR]

Last line: ``to_hf_vs_copy: <to-hf bytes/s divided by copy bytes/s>`` (goal >= 0.5).
"""
import argparse
import os
import shutil
import tempfile
import time

from igrpo_megatron.demo.tiny import make_model
from igrpo_megatron.weights.convert import checkpoint_to_hf, hf_to_checkpoint


def plain_copy(src_dir: str, dst_dir: str, chunk: int = 64 << 20) -> int:
    """Read every safetensors file of ``src_dir`` and write it to ``dst_dir``; returns bytes."""
    os.makedirs(dst_dir)
    total = 0
    for name in sorted(os.listdir(src_dir)):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(src_dir, name), "rb") as fin, open(os.path.join(dst_dir, name), "wb") as fout:
            while block := fin.read(chunk):
                fout.write(block)
                total += len(block)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=14, help="decoder layers (14 gives ~1.1 GB in fp32)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; the best of each is reported")
    parser.add_argument("--tmp", default=None, help="scratch folder (default: the system temp dir)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="igrpo_convert_bench_", dir=args.tmp)
    try:
        hf_dir = make_model(os.path.join(work, "hf"), arch="qwen2", vocab_size=32000, hidden_size=1024,
                            num_layers=args.layers, num_heads=16, num_kv_heads=4, intermediate_size=4096,
                            with_tokenizer=False)
        t0 = time.perf_counter()
        hf_to_checkpoint(hf_dir, os.path.join(work, "ckpt"), dtype="fp32")
        print(f"from-hf: {time.perf_counter() - t0:.1f} s")

        to_hf_s = copy_s = float("inf")
        for _ in range(args.repeats):  # alternate the two, keep the best of each (the machine is shared)
            out, copy = os.path.join(work, "out"), os.path.join(work, "copy")
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(copy, ignore_errors=True)
            t0 = time.perf_counter()
            index = checkpoint_to_hf(os.path.join(work, "ckpt"), out, max_shard_bytes=1 << 30)
            to_hf_s = min(to_hf_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            copied = plain_copy(hf_dir, copy)
            copy_s = min(copy_s, time.perf_counter() - t0)
        nbytes = index["metadata"]["total_size"]

        to_hf_rate, copy_rate = nbytes / to_hf_s, copied / copy_s
        print(f"weights: {nbytes / 1e9:.3f} GB (copy baseline: {copied / 1e9:.3f} GB of safetensors files)")
        print(f"to-hf: {to_hf_s:.2f} s, {to_hf_rate / 1e6:.1f} MB/s")
        print(f"plain read+write copy: {copy_s:.2f} s, {copy_rate / 1e6:.1f} MB/s")
        print(f"to_hf_vs_copy: {to_hf_rate / copy_rate:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
