#!/bin/bash
# iGRPO on DeepSeek-R1-Distill-Qwen-7B / MATH, the paper's 7B layout: 2 nodes x 8 GPUs,
# node 1 serves vLLM rollouts (8 servers, TP 1), node 2 trains (8 ranks, TP 2 x DP 4).
#   sbatch launch/igrpo_7b.sh [section.key=value ...]
#   CONFIG=configs/r1d7b_math_grpo.yaml sbatch launch/igrpo_7b.sh      # the GRPO baseline
# Submit from the repository root; knobs are listed at the top of launch/common.sh.
#SBATCH --job-name=igrpo-7b
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
# Time limit: SIGUSR1 15 min before it, then checkpoint and requeue (launch/common.sh).
#SBATCH --signal=B:USR1@900
#SBATCH --requeue
#SBATCH --open-mode=append

CONFIG=${CONFIG:-configs/r1d7b_math_igrpo.yaml}
source "${IGRPO_ROOT:-$SLURM_SUBMIT_DIR}/launch/common.sh"
igrpo_run "$@"
