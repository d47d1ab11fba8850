"""``igrpo-serve --config X [key=value ...]``: one vLLM rollout server with the project's extension.

The server gets the model of ``model.hf_path`` (or ``--model``) and every ``rollout.*`` setting,
binds ``rollout.host:rollout.port`` (127.0.0.1 unless the config names an interface) and requires
an API key on every route: ``rollout.api_key``, else ``$IGRPO_ROLLOUT_API_KEY``, else the key in
``<train.output_dir>/rollout_api_key`` (mode 0600), generated and stored there on the first start;
``igrpo-train`` and ``igrpo-eval`` with the same output folder and ``rollout.server_urls`` read it.
It runs until SIGINT/SIGTERM and then stops the server's processes. ``--dry-run`` prints the
server command and exits.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time

from igrpo_megatron.cli.runner import run_cli
from igrpo_megatron.config import ConfigError, load_config
from igrpo_megatron.rollout.auth import API_KEY_ENV
from igrpo_megatron.weights.hub import resolve_model


def main(argv: list[str] | None = None) -> int:
    return run_cli("igrpo-serve", _main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="igrpo-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (configs/*.yaml)")
    parser.add_argument("--model", help="HF model folder to serve (default: model.hf_path)")
    parser.add_argument("--log", help="server log file (default: <train.output_dir>/rollout_server_<port>.log)")
    parser.add_argument("--dry-run", action="store_true", help="print the server command and exit")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. rollout.port=8001")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides, training=False)
    model = args.model or cfg.model.hf_path
    if not model:
        raise ConfigError("no model to serve: set model.hf_path or pass --model")
    model = resolve_model(model, "--model" if args.model else "model.hf_path")

    from igrpo_megatron.rollout.server import (build_server_command, cuda_available, launch_server,
                                               resolve_api_key, store_api_key)

    r = cfg.rollout
    if args.dry_run:
        cmd = build_server_command(r, model, r.port, not cuda_available(), cfg.model.tokenizer_path)
        print(shlex.join(cmd))
        return 0
    api_key = resolve_api_key(r, cfg.train.output_dir)
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    if not (r.api_key or os.environ.get(API_KEY_ENV)):
        print(f"igrpo-serve: API key in {store_api_key(cfg.train.output_dir, api_key)}", flush=True)
    log_path = args.log or os.path.join(cfg.train.output_dir, f"rollout_server_{r.port}.log")
    handle = launch_server(r, model, log_path, api_key=api_key, tokenizer_path=cfg.model.tokenizer_path)
    print(f"igrpo-serve: serving {model} at {handle.url} (log {log_path})", flush=True)

    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(True))
    while not stopping and handle.process.poll() is None:
        time.sleep(1.0)
    code = handle.process.poll()
    handle.stop()
    if code is not None:
        print(f"igrpo-serve: server exited with code {code}; see {log_path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
