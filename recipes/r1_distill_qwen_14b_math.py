"""DeepSeek-R1-Distill-Qwen-14B on MATH train: GRPO vs iGRPO at 14B.
Layout: 5 nodes x 8 GPUs, one serving vLLM (8 servers), four training at TP 4 x DP 8."""
from recipes.paper import Model, runs

MODEL = Model("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", model_type="qwen2", tp=4, train_nodes=4)
RECIPES = runs("r1d14b_math", MODEL, "math")
