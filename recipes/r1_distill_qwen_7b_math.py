"""DeepSeek-R1-Distill-Qwen-7B on MATH train (7,500 problems): the paper's controlled comparison
(GRPO vs iGRPO, Table 1), the wrapper ablation under DAPO and GSPO, and Table 1's other
baselines, Critique-GRPO and Self-Verification.
Layout: 2 nodes x 8 GPUs, one serving vLLM (8 servers), one training at TP 2 x DP 4."""
from recipes.paper import Model, baselines, runs

MODEL = Model("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", model_type="qwen2", tp=2, train_nodes=1)
RECIPES = (runs("r1d7b_math", MODEL, "math", variants=True)
           + baselines("r1d7b_math", MODEL, "math", verify_buffer_size=40000))
