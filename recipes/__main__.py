"""``python -m recipes [--check]``: write configs/<name>.yaml for every runnable recipe;
``--check`` writes nothing and exits 1 if any file is missing or differs from its recipe."""
import argparse
import os
import sys

from recipes import build, render_yaml, runnable

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare, exit 1 on a difference")
    args = parser.parse_args()
    stale = []
    for name in runnable():
        build(name)  # validates
        path = os.path.join(CONFIGS, f"{name}.yaml")
        text = render_yaml(name)
        current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {path}")
    if args.check and stale:
        print("out of date with recipes/ (run `python -m recipes`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
