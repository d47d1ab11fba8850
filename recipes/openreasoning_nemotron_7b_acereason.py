"""OpenReasoning-Nemotron-7B (a Qwen2.5 fine-tune) on AceReason-Math (9,400 problems): the
paper's strongest 7B result (AIME24 85.62, AIME25 79.64 with iGRPO).
Layout as the 7B DeepSeek run: 2 nodes x 8 GPUs, TP 2."""
from recipes.paper import Model, runs

MODEL = Model("nvidia/OpenReasoning-Nemotron-7B", model_type="qwen2", tp=2, train_nodes=1)
RECIPES = runs("orn7b_acereason", MODEL, "acereason")
