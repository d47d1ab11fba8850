"""Stand-in for ``igrpo-train`` in the Slurm launch test, run by the launcher's real torchrun.

Each rank joins the real gloo process group (so the c10d rendezvous must have worked), checks
an all-reduce, parses its arguments with the real config loader, and rank 0 calls every server
URL it was given with and without the API key. Writes ``$PROBE_OUT/train_rank<r>.json``.
"""
import argparse
import json
import os
import urllib.error
import urllib.request

import torch
import torch.distributed as dist

from igrpo_megatron.config import load_config
from igrpo_megatron.rollout import resolve_api_key


def _status(url: str, key: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    record = {
        "rank": rank, "world_size": world, "local_rank": int(os.environ["LOCAL_RANK"]),
        "all_reduce": t.item(), "run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
        "slurm_step_tasks": os.environ.get("SLURM_STEP_NUM_TASKS"),
        "server_urls": cfg.rollout.server_urls, "api_key": resolve_api_key(cfg.rollout),
        "cmdline": open("/proc/self/cmdline").read(),
        "max_steps": cfg.train.max_steps,
    }
    if rank == 0:
        key = record["api_key"]
        record["models_with_key"] = [_status(u + "/v1/models", key) for u in cfg.rollout.server_urls]
        record["models_without_key"] = [_status(u + "/v1/models", None) for u in cfg.rollout.server_urls]
    with open(os.path.join(os.environ["PROBE_OUT"], f"train_rank{rank}.json"), "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
