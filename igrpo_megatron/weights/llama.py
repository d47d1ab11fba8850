"""Llama (2, 3, 3.1 with its rope frequency scaling)."""
from igrpo_megatron.weights.arch import register
from igrpo_megatron.weights.gpt import GPTSpec


@register
class LlamaSpec(GPTSpec):
    """Llama has no q/k/v biases unless ``attention_bias`` says so."""

    model_type = "llama"
    qkv_bias_default = False
