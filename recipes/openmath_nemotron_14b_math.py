"""OpenMath-Nemotron-14B (a Qwen2.5-14B fine-tune) on MATH train: GRPO vs iGRPO (Table 1: average
76.73 -> 78.00). Layout as the 14B DeepSeek run: 5 nodes x 8 GPUs, one serving vLLM, four
training at TP 4 x DP 8 (launch/igrpo_14b.sh with CONFIG=configs/omn14b_math_igrpo.yaml)."""
from recipes.paper import Model, runs

MODEL = Model("nvidia/OpenMath-Nemotron-14B", model_type="qwen2", tp=4, train_nodes=4)
RECIPES = runs("omn14b_math", MODEL, "math")
