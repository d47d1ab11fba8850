"""``igrpo-train --config X [key=value ...]``: the trainer on every rank (torchrun or one process).

``--print-config`` prints the resolved YAML tree (file + overrides, defaults filled in,
validated) and exits without touching torch.distributed: the way to check a run before sbatch.
``--help-config [section]`` prints every field with its type, default and help.
``--dry-run`` also reads the model's config.json (no weights, no torch), checks every layout
divisibility and prints the parallel layout and a per-GPU memory plan (igrpo_megatron/memory_plan.py);
it exits 1 when the plan does not fit ``--gpu-memory-gib``.

SIGUSR1 (Slurm's time-limit warning, forwarded by launch/common.sh) or SIGTERM makes the run stop
after the step in flight, save, and exit with ``preemption.REQUEUE_EXIT_CODE`` (75).
"""
from __future__ import annotations

import argparse
import signal
import sys

from igrpo_megatron import preemption
from igrpo_megatron.cli.runner import run_cli
from igrpo_megatron.config import dump_yaml, load_config, validate


def main(argv: list[str] | None = None) -> int:
    return run_cli("igrpo-train", _main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="igrpo-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (configs/*.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--help-config", nargs="?", const="", metavar="SECTION",
                        help="print the config fields (of one section) with type, default and help, and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the layout and print the per-GPU memory plan, then exit (no weights, no GPU)")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU for --dry-run")
    parser.add_argument("--train-gpus", type=int, default=8,
                        help="trainer ranks for --dry-run: training nodes x GPUs per node (the 14B layout: 32)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs of a rollout node for --dry-run")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    if args.help_config is not None:
        from igrpo_megatron.config_help import format_help

        print(format_help(args.help_config or None), end="")
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    if args.dry_run:
        from igrpo_megatron.memory_plan import dry_run

        validate(cfg, world_size=args.train_gpus)
        report, fits = dry_run(cfg, gpu_memory_gib=args.gpu_memory_gib, train_gpus=args.train_gpus,
                               gpus_per_node=args.gpus_per_node)
        print(report)
        return 0 if fits else 1
    from igrpo_megatron.trainer import train

    preemption.install_handlers()
    try:
        train(cfg)  # checks that need the world size or the model shape raise ConfigError here
    except preemption.StopForRequeue as e:
        print(f"igrpo-train: {e}; exiting with {preemption.REQUEUE_EXIT_CODE} to be requeued", file=sys.stderr)
        return preemption.REQUEUE_EXIT_CODE
    finally:
        # Python drops its own handlers at interpreter shutdown: a repeated time-limit warning
        # arriving then would kill the rank (-10) and turn a clean exit 75 into a failure.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    return 0


if __name__ == "__main__":
    sys.exit(main())
