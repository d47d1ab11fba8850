"""The saved samples of one benchmark, so that an interrupted evaluation resumes where it stopped.

``<output_dir>/<benchmark>.jsonl`` gets one line per finished sample, appended and flushed as
its request returns; ``<benchmark>.settings.json`` beside it records what made them (model,
sampling, k, max tokens, seed and a hash of every prompt and gold answer). A rerun with the
same settings keeps the saved samples and generates only the missing ones; with any other
settings it is refused, so samples of two protocols never share a file. A kill can cut the
last line short: that line is dropped (its sample is generated again), any other bad line is
an error.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

from igrpo_megatron.config import ConfigError

Key = tuple[str, int]  # (problem id, sample index)


class SampleStore:
    def __init__(self, output_dir: str, name: str, settings: dict) -> None:
        self.path = os.path.join(output_dir, f"{name}.jsonl")
        self.settings_path = os.path.join(output_dir, f"{name}.settings.json")
        self.settings = settings

    def open(self) -> dict[Key, dict]:
        """Check the settings against the saved ones (or save them) and return the saved samples."""
        if os.path.exists(self.settings_path):
            with open(self.settings_path, encoding="utf-8") as f:
                saved = json.load(f)
            changed = [f"{k}: {saved.get(k)!r} -> {self.settings.get(k)!r}"
                       for k in sorted(set(saved) | set(self.settings)) if saved.get(k) != self.settings.get(k)]
            if changed:
                raise ConfigError(f"{self.path} holds samples made with other settings ({'; '.join(changed)}); "
                                  f"set another eval.output_dir, or delete {self.path} to start over")
        elif os.path.exists(self.path):
            raise ConfigError(f"{self.path} has no {os.path.basename(self.settings_path)} beside it, so its "
                              f"settings are unknown; set another eval.output_dir or delete {self.path}")
        else:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            _write_atomic(self.settings_path, json.dumps(self.settings, indent=2) + "\n")
        return self._read()

    def _read(self) -> dict[Key, dict]:
        if not os.path.exists(self.path):
            return {}
        with open(self.path, "rb") as f:
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) < len(data):  # a write cut short by a kill: drop it so appends stay line-aligned
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        records: dict[Key, dict] = {}
        for n, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
            try:
                rec = json.loads(line)
                records.setdefault((rec["id"], rec["sample"]), rec)
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{self.path} line {n} is not a sample record ({e}); delete the file "
                                  f"to start over") from None
        return records

    def append(self, records: Iterable[dict]) -> None:
        """Add finished samples to the file now, so a kill after this call loses none of them."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, records: Iterable[dict]) -> None:
        """Replace the file by ``records`` (all samples, in problem and sample order) at once."""
        _write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in records))


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
