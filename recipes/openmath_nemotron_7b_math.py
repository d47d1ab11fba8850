"""OpenMath-Nemotron-7B (a Qwen2.5 fine-tune) on MATH train: GRPO vs iGRPO (Table 1).
Layout as the 7B DeepSeek run: 2 nodes x 8 GPUs, TP 2."""
from recipes.paper import Model, runs

MODEL = Model("nvidia/OpenMath-Nemotron-7B", model_type="qwen2", tp=2, train_nodes=1)
RECIPES = runs("omn7b_math", MODEL, "math")
