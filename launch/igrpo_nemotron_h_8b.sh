#!/bin/bash
# iGRPO on Nemotron-H-8B-Base-8K / MATH, the project's layout for it (the paper gives none; see
# recipes/nemotron_h_8b_math.py): 2 nodes x 8 GPUs, node 1 serves vLLM rollouts (8 servers, TP 1),
# node 2 trains (8 ranks, TP 2 x DP 4).
#   sbatch launch/igrpo_nemotron_h_8b.sh [section.key=value ...]
#   CONFIG=configs/nemoh8b_math_grpo.yaml sbatch launch/igrpo_nemotron_h_8b.sh   # the GRPO baseline
# Submit from the repository root; knobs are listed at the top of launch/common.sh.
#SBATCH --job-name=igrpo-nemoh8b
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out

CONFIG=${CONFIG:-configs/nemoh8b_math_igrpo.yaml}
source "${IGRPO_ROOT:-$SLURM_SUBMIT_DIR}/launch/common.sh"
igrpo_run "$@"
