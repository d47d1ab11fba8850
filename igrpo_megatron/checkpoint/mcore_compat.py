"""Work-arounds for megatron-core 0.16.1 defects on the torch-Adam path of the distributed optimizer.

Delete this module (and its two call sites in :mod:`.dist_checkpoint`) once megatron-core is
upgraded past them; each function says what it works around. Both matter only when neither apex
nor Transformer Engine is installed (``HAVE_APEX_OR_TE`` False: CPU runs, the tests), where
Megatron's ``DistributedOptimizer`` drives a plain ``torch.optim.Adam``:

- :func:`prime_empty_adam_state`: ``DistributedOptimizer.state_dict()`` asserts on torch Adam's
  per-parameter ``step``, so it fails on an optimizer that has not stepped (loading into a fresh
  one, saving step 0).
- :func:`load_optimizer_state`: ``DistributedOptimizer.load_state_dict`` copies a ``step``
  tensor the reshardable formats do not store (KeyError), and then shares one ``step`` tensor
  between all parameters (the bias correction would advance once per parameter per step).
"""
from __future__ import annotations

import torch


def prime_empty_adam_state(optimizer) -> None:
    """Give a fresh torch Adam inside Megatron's DistributedOptimizer its (zero) state.

    Without apex or Transformer Engine, megatron-core 0.16.1's ``DistributedOptimizer.state_dict()``
    reads torch Adam's per-parameter ``step`` and asserts there is exactly one value, so it fails
    on an optimizer that has not stepped yet: i.e. when loading into a freshly built one, or
    saving step 0. The state written here is exactly what torch Adam creates on its first step.
    """
    from megatron.core.optimizer.distrib_optimizer import HAVE_APEX_OR_TE, DistributedOptimizer

    if HAVE_APEX_OR_TE:
        return
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(opt, DistributedOptimizer) or not isinstance(inner, torch.optim.Adam) or inner.state:
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                inner.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}


def load_optimizer_state(optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, working around two megatron-core 0.16.1 defects of
    the torch-Adam path (taken when neither apex nor Transformer Engine is installed):

    - ``DistributedOptimizer.load_state_dict`` restores Adam's ``step`` from the param groups,
      then copies every per-parameter state tensor from the checkpoint including ``step``, which
      the reshardable formats do not store (KeyError). During the load, only the tensors the
      checkpoint has are copied.
    - it gives every parameter the *same* ``step`` tensor; torch Adam increments each
      parameter's step in place, so the shared counter would advance once per parameter per
      step and change the bias correction. Each parameter gets its own copy afterwards.
    """
    from megatron.core.optimizer.distrib_optimizer import HAVE_APEX_OR_TE, DistributedOptimizer

    if HAVE_APEX_OR_TE:
        optimizer.load_state_dict(state)
        return
    original = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_present_states(self, model_param, tensors):
        if "step" in tensors or self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        dst = {"param": main_param, **self.optimizer.state[main_param]}
        for key, value in tensors.items():
            dst[key].copy_(value)

    DistributedOptimizer._set_main_param_and_optimizer_states = set_present_states
    try:
        optimizer.load_state_dict(state)
    finally:
        DistributedOptimizer._set_main_param_and_optimizer_states = original
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            for param_state in inner.state.values():
                if isinstance(param_state.get("step"), torch.Tensor):
                    param_state["step"] = param_state["step"].clone()
