"""``igrpo-train --config X [key=value ...]``: the trainer on every rank (torchrun or one process).

``--print-config`` prints the resolved YAML tree (file + overrides, defaults filled in,
validated) and exits without touching torch.distributed: the way to check a run before sbatch.
``--help-config [section]`` prints every field with its type, default and help.
"""
from __future__ import annotations

import argparse
import sys

from igrpo_megatron.config import ConfigError, dump_yaml, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="igrpo-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (configs/*.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--help-config", nargs="?", const="", metavar="SECTION",
                        help="print the config fields (of one section) with type, default and help, and exit")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    try:
        if args.help_config is not None:
            from igrpo_megatron.config_help import format_help

            print(format_help(args.help_config or None), end="")
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        from igrpo_megatron.trainer import train

        train(cfg)  # checks that need the world size or the model shape raise ConfigError here
    except ConfigError as e:
        print(f"igrpo-train: config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
