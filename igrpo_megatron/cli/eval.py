"""``igrpo-eval --config X [key=value ...]``: avg@k on the paper's math benchmarks.

Generation runs on the rollout servers in ``rollout.server_urls`` (started by ``igrpo-serve``;
their key comes from ``rollout.api_key`` or ``$IGRPO_ROLLOUT_API_KEY``). With no URLs, one server
is started here for ``model.hf_path`` (or ``--model``) and stopped at the end. Each request is
capped at ``rollout.max_model_len``: raise it (e.g. ``rollout.max_model_len=32768``) for the
paper's long generations. Results go to ``eval.output_dir``; the last line printed is the
average over benchmarks.

  igrpo-eval --config configs/r1d7b_math_igrpo.yaml --model runs/r1d7b_math_igrpo/hf \\
      rollout.max_model_len=32768 eval.benchmarks=[aime24,math500]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from igrpo_megatron.config import ConfigError, load_config


def _print_table(results: dict) -> None:
    for name, s in results["benchmarks"].items():
        n = s["samples"]
        extra = "  ".join(f"{k} {v:.4f}" for k, v in s.items() if k.startswith("pass@"))
        print(f"{name:14s} problems {s['problems']:4d}  avg@{n:<3d} {s[f'avg@{n}']:.4f}  {extra}"
              f"  truncated {s['truncated']}  timeouts {s['timeouts']}")
    print(f"average: {results['average']:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="igrpo-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (its eval, model, rollout and reward sections are used)")
    parser.add_argument("--model", help="HF model folder or hub name to evaluate (default: model.hf_path)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. eval.samples=4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        overrides = list(args.overrides) + ([f"model.hf_path={args.model}"] if args.model else [])
        cfg = load_config(args.config, overrides, training=False)
        from igrpo_megatron.eval.runner import evaluate
        from igrpo_megatron.rollout import launch_server, resolve_api_key

        r = cfg.rollout
        urls = list(r.server_urls)
        api_key = resolve_api_key(r, cfg.train.output_dir, generate=not urls)
        with contextlib.ExitStack() as stack:
            if not urls:
                if not cfg.model.hf_path:
                    raise ConfigError("no model to evaluate: set model.hf_path, pass --model, or give "
                                      "rollout.server_urls of running servers")
                log_path = os.path.join(cfg.eval.output_dir, "server.log")
                server = stack.enter_context(launch_server(r, cfg.model.hf_path, log_path, api_key=api_key,
                                                           tokenizer_path=cfg.model.tokenizer_path))
                urls = [server.url]
            results = evaluate(cfg, urls, api_key)
    except ConfigError as e:
        print(f"igrpo-eval: config error: {e}", file=sys.stderr)
        return 2
    _print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
