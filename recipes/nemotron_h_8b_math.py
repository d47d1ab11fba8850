"""Nemotron-H-8B-Base-8K (hybrid Mamba-2 / attention) on MATH train: GRPO vs iGRPO (Table 1).

NOT RUNNABLE YET: the project has no Megatron provider for the hybrid model (Megatron's
MambaModel, plus its HF weight mapping and a numerics check of the CPU scan against
transformers). Building these recipes fails validation with that message instead of training
something else; no configs/*.yaml is written for them.
"""
from recipes.paper import Model, runs

MODEL = Model("nvidia/Nemotron-H-8B-Base-8K", model_type="nemotron_h", tp=2, train_nodes=1,
              note="the Nemotron-H hybrid (Mamba-2 + attention) model provider is not implemented yet: "
                   "igrpo_megatron/models/ builds only GPT-style models, the Megatron MambaModel "
                   "provider and its HF weight mapping are still to be written")
RECIPES = runs("nemoh8b_math", MODEL, "math")
