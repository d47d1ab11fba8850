"""Nemotron-H-8B-Base-8K (hybrid Mamba-2 / attention, Megatron's MambaModel) on MATH train: GRPO vs
iGRPO, Critique-GRPO and Self-Verification (Table 1). Layout (ours; the paper states no hardware for this model): that of its 7B runs,
2 nodes x 8 GPUs, one serving vLLM (8 servers, TP 1), one training at TP 2 x DP 4. 8B parameters
fit a TP-2 shard with the distributed optimizer on 80 GB as the 7B models do, and TP 2 divides all
that must divide (128 Mamba heads, 8 groups, 32 attention heads, 8 key/value heads)."""
from recipes.paper import Model, baselines, runs

MODEL = Model("nvidia/Nemotron-H-8B-Base-8K", model_type="nemotron_h", tp=2, train_nodes=1)
RECIPES = (runs("nemoh8b_math", MODEL, "math")
           + baselines("nemoh8b_math", MODEL, "math", verify_buffer_size=5000))
