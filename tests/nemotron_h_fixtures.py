"""A tiny random NemotronH checkpoint (transformers' own class) with all three layer types.

Hidden 128, pattern ``M*M-M-``: Mamba-2 with 8 heads of 16 in 2 groups, state 16, conv 4 and
scan chunks of 8 (so a 24-token sequence spans three chunks); attention with 4 heads / 2 kv heads
of 32 (vLLM's CPU attention needs head_dim >= 32); a squared-ReLU MLP of 256. Weights are made
non-trivial (norms, D and conv biases away from their init, larger projections so logits reach
several units) so a layout error shows in logits. Two Mamba heads get a very negative dt_bias:
their step is below transformers' default dt floor (time_step_min), which is what the clamp test
relies on.
"""
from __future__ import annotations

import json
import os

PATTERN = "M*M-M-"
CHUNK = 8
SLOW_HEADS = (1, 4, 6)  # heads whose softplus(dt_bias) ~ 5e-5 < time_step_min = 1e-3


def make_tiny_nemotron_h(out_dir: str, seed: int = 0, pattern: str = PATTERN, write_pattern: bool = False) -> str:
    """Save the model and the project's tiny tokenizer to ``out_dir``. ``write_pattern`` stores the
    hub spelling (``hybrid_override_pattern``) in config.json instead of transformers' ``layers_block_type``."""
    import torch
    from transformers import NemotronHConfig, NemotronHForCausalLM

    from igrpo_megatron.demo.tiny import make_tokenizer

    tok = make_tokenizer(out_dir)
    cfg = NemotronHConfig(
        vocab_size=len(tok), hidden_size=128, hybrid_override_pattern=pattern,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        intermediate_size=256, mlp_hidden_act="relu2",
        mamba_num_heads=8, mamba_head_dim=16, n_groups=2, ssm_state_size=16, conv_kernel=4, chunk_size=CHUNK,
        layer_norm_epsilon=1e-5, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        use_bias=False, mlp_bias=False, attention_bias=False, use_conv_bias=True, dtype="float32",
    )
    torch.manual_seed(seed)
    model = NemotronHForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".D"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("conv1d.bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("dt_bias"):
                p[list(SLOW_HEADS)] = -10.0
            elif p.dim() == 2:
                p.mul_(3.0)
    model.save_pretrained(out_dir, safe_serialization=True)
    path = os.path.join(out_dir, "config.json")
    with open(path) as f:
        raw = json.load(f)
    if write_pattern:
        raw["hybrid_override_pattern"] = pattern
        raw.pop("layers_block_type", None)
        with open(path, "w") as f:
            json.dump(raw, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({k: raw[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}, f)
    return out_dir
