"""``igrpo-eval --config X [--model M] [key=value ...]``: the paper's evaluation protocol.

avg@k (the paper's figure), maj@k, pass@k, truncation and length on the math benchmarks and
GPQA-Diamond / MMLU-Pro. ``--model`` (default ``model.hf_path``) is an HF folder, a hub name or
a Megatron checkpoint (converted to a temporary HF folder, removed at the end).

Generation runs on the rollout servers in ``rollout.server_urls`` (started by ``igrpo-serve``;
their key comes from ``rollout.api_key`` or ``$IGRPO_ROLLOUT_API_KEY``; each must hold the
longest prompt plus ``eval.max_tokens``). With no URLs, ``eval.servers`` servers are started here
with a context that fits (``eval.max_model_len``, default longest prompt + ``eval.max_tokens``)
and stopped at the end. Samples are saved as they arrive in ``eval.output_dir``: run the same
command again after an interruption and only the missing ones are generated. The last line
printed is the average over benchmarks; ``results.md`` holds the tables.

  igrpo-eval --config configs/r1d7b_math_igrpo.yaml --model runs/r1d7b_math_igrpo/checkpoints \\
      eval.benchmarks=[aime24,math500] eval.paper_row=DeepSeek-R1-Distill-Qwen-7B/iGRPO
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys

from igrpo_megatron.cli.runner import run_cli
from igrpo_megatron.config import Config, ConfigError, load_config


def _print_table(results: dict) -> None:
    for name, s in results["benchmarks"].items():
        n = s["samples"]
        extra = "  ".join(f"{k} {v:.4f}" for k, v in s.items() if k.startswith("pass@"))
        print(f"{name:14s} problems {s['problems']:4d}  avg@{n:<3d} {s[f'avg@{n}']:.4f}  maj@{n} {s[f'maj@{n}']:.4f}"
              f"  {extra}  truncated {s['truncated']}  timeouts {s['timeouts']}  reused {s['reused']}"
              f"  generated {s['generated']}")
    print(f"average: {results['average']:.4f}")


def _gpu_groups(count: int, per_server: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each of ``count`` servers, ``per_server`` GPUs apiece."""
    import torch

    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    visible = visible or [str(i) for i in range(torch.cuda.device_count())]
    if count * per_server > len(visible):
        raise ConfigError(f"eval.servers={count} x rollout.tensor_parallel_size={per_server} needs "
                          f"{count * per_server} GPUs, {len(visible)} are visible")
    return [",".join(visible[i * per_server:(i + 1) * per_server]) for i in range(count)]


def _start_servers(stack: contextlib.ExitStack, cfg: Config, hf_path: str, needed: int) -> tuple[list[str], str]:
    """Start ``eval.servers`` servers with a context of ``needed`` tokens (or eval.max_model_len)."""
    from igrpo_megatron.rollout import launch_server, resolve_api_key
    from igrpo_megatron.rollout.server import cuda_available

    e = cfg.eval
    if e.max_model_len is not None and e.max_model_len < needed:
        raise ConfigError(f"eval.max_model_len={e.max_model_len} cannot hold the longest prompt plus "
                          f"eval.max_tokens ({needed} tokens); raise it or leave it unset")
    rollout = dataclasses.replace(cfg.rollout, max_model_len=e.max_model_len or needed)
    api_key = resolve_api_key(rollout, cfg.train.output_dir, generate=True)
    gpus = _gpu_groups(e.servers, rollout.tensor_parallel_size) if e.servers > 1 and cuda_available() else None

    def start(i: int):
        log_path = os.path.join(e.output_dir, "server.log" if e.servers == 1 else f"server{i}.log")
        return launch_server(rollout, hf_path, log_path, port=rollout.port + i, api_key=api_key,
                             tokenizer_path=cfg.model.tokenizer_path,
                             env={"CUDA_VISIBLE_DEVICES": gpus[i]} if gpus else None)

    # One after another, from this thread: a server's guard dies with the THREAD that started it
    # (PR_SET_PDEATHSIG follows the creating thread), so a pool thread's exit would stop it.
    handles = [stack.enter_context(start(i)) for i in range(e.servers)]
    return [h.url for h in handles], api_key


def main(argv: list[str] | None = None) -> int:
    return run_cli("igrpo-eval", _main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="igrpo-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (its eval, model, rollout and reward sections are used)")
    parser.add_argument("--model", help="HF folder, hub name or Megatron checkpoint to evaluate (default: model.hf_path)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. eval.samples=4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = list(args.overrides) + ([f"model.hf_path={args.model}"] if args.model else [])
    cfg = load_config(args.config, overrides, training=False)
    from igrpo_megatron.data import load_tokenizer
    from igrpo_megatron.eval.model_source import resolve_model
    from igrpo_megatron.eval.runner import check_server_lengths, evaluate, prepare, required_model_len
    from igrpo_megatron.rollout import resolve_api_key

    name = cfg.model.hf_path
    if not name:
        raise ConfigError("no model to evaluate: set model.hf_path or pass --model (its tokenizer builds "
                          "the prompts, also with rollout.server_urls)")
    with contextlib.ExitStack() as stack:
        if not os.path.exists(name):  # a hub name: one snapshot, as everywhere else
            from igrpo_megatron.weights.hub import resolve_model_config

            cfg = dataclasses.replace(cfg, model=resolve_model_config(cfg.model))
        model = stack.enter_context(resolve_model(cfg.model.hf_path, cfg.eval.output_dir))
        cfg.model = dataclasses.replace(cfg.model, hf_path=model.hf_path)
        tokenizer = load_tokenizer(cfg.model)
        jobs = prepare(cfg, tokenizer, model.identity)
        urls, api_key = list(cfg.rollout.server_urls), ""
        if any(job.missing_samples for job in jobs):
            needed = required_model_len(jobs, cfg.eval)
            if urls:
                api_key = resolve_api_key(cfg.rollout, cfg.train.output_dir, generate=False)
                check_server_lengths(urls, api_key, needed)
            else:
                urls, api_key = _start_servers(stack, cfg, model.hf_path, needed)
        results = evaluate(cfg, jobs, tokenizer, urls, api_key, name)
    _print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
