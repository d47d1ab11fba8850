"""Pure tensor functions of the method: advantages, losses, and the iGRPO wrapper's own pieces.

No distributed state and no I/O; imports nothing of the project but config types.
"""
from igrpo_megatron.algorithms.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from igrpo_megatron.algorithms.igrpo import (
    SYSTEM_PROMPT,
    RefinementTemplate,
    build_prompt_messages,
    build_refinement_messages,
    dynamic_sampling_mask,
    fit_draft,
    refinement_prompt_ids,
    select_best_drafts,
)
from igrpo_megatron.algorithms.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    entropy_from_logits,
    kl_estimate,
    policy_loss,
    sft_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGGREGATIONS", "KL_ESTIMATORS", "SYSTEM_PROMPT", "RefinementTemplate",
    "build_prompt_messages", "build_refinement_messages", "compute_advantages", "dynamic_sampling_mask",
    "entropy_from_logits", "fit_draft", "kl_estimate", "policy_loss", "refinement_prompt_ids",
    "select_best_drafts", "sft_loss",
]
