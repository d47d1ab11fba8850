"""Qwen2 (and the models built on it: DeepSeek-R1-Distill-Qwen, OpenMath/OpenReasoning-Nemotron)."""
from igrpo_megatron.weights.arch import register
from igrpo_megatron.weights.gpt import GPTSpec


@register
class Qwen2Spec(GPTSpec):
    """Qwen2 always has q/k/v biases (its config.json has no ``attention_bias`` field)."""

    model_type = "qwen2"
    qkv_bias_default = True
