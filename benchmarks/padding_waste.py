"""Computed tokens / real tokens of one training batch's micro-batches (issue 17 item 2).

A realistic RL length mix: 1,024 rows whose lengths are drawn log-uniform between 30 and 4,096
tokens. Before: every row padded to the batch's longest row (main before length grouping). After:
rows grouped longest first, each micro-batch padded to its own longest row
(``models.logprobs.micro_batches_by_length``), with 4 rows each and with a 16,384-token budget
(``train.max_tokens_per_micro_batch``). Pure arithmetic on the grouping the training step uses;
prints the headline last.
"""
import math

import torch

from igrpo_megatron.models.logprobs import micro_batches_by_length

ROWS, LOW, HIGH, MBS, BUDGET = 1024, 30, 4096, 4, 16384


def realistic_lengths() -> torch.Tensor:
    """The length mix: ROWS rows, log-uniform in [LOW, HIGH] tokens (seeded)."""
    g = torch.Generator().manual_seed(0)
    return torch.exp(math.log(LOW) + torch.rand(ROWS, generator=g) * (math.log(HIGH) - math.log(LOW))).long()


def computed_tokens(lengths: torch.Tensor) -> tuple[int, int, int, int]:
    """Computed tokens padded to the batch's longest row, grouped by length (MBS rows), grouped
    by the BUDGET; and the number of budget micro-batches."""
    groups = micro_batches_by_length(lengths, MBS, BUDGET)
    return (len(lengths) * int(lengths.max()),
            sum(len(rows) * width for rows, width in micro_batches_by_length(lengths, MBS)),
            sum(len(rows) * width for rows, width in groups), len(groups))


def main() -> None:
    lengths = realistic_lengths()
    real = int(lengths.sum())
    before, by_length, budget, n_groups = computed_tokens(lengths)
    print(f"rows {ROWS}, lengths log-uniform in [{LOW}, {HIGH}], real tokens {real}")
    print(f"padded to the batch's longest row: computed/real {before / real:.3f}")
    print(f"grouped by length, {MBS} rows each: computed/real {by_length / real:.3f}")
    print(f"grouped by length, budget {BUDGET} tokens ({n_groups} micro-batches): computed/real {budget / real:.3f}")
    print(f"computed_per_real_tokens: {by_length / real:.3f}")


if __name__ == "__main__":
    main()
