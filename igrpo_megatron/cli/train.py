"""``igrpo-train --config X [key=value ...]``: the trainer on every rank (torchrun or one process).

``--print-config`` prints the resolved YAML tree (file + overrides, defaults filled in,
validated) and exits without touching torch.distributed: the way to check a run before sbatch.

SIGUSR1 (Slurm's time-limit warning, forwarded by launch/common.sh) or SIGTERM makes the run stop
after the step in flight, save, and exit with ``preemption.REQUEUE_EXIT_CODE`` (75).
"""
from __future__ import annotations

import argparse
import sys

from igrpo_megatron import preemption
from igrpo_megatron.config import ConfigError, dump_yaml, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="igrpo-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (configs/*.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        from igrpo_megatron.trainer import train

        preemption.install_handlers()
        train(cfg)  # checks that need the world size or the model shape raise ConfigError here
    except ConfigError as e:
        print(f"igrpo-train: config error: {e}", file=sys.stderr)
        return 2
    except preemption.StopForRequeue as e:
        print(f"igrpo-train: {e}; exiting with {preemption.REQUEUE_EXIT_CODE} to be requeued", file=sys.stderr)
        return preemption.REQUEUE_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
