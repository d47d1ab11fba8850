#!/bin/bash
# iGRPO on DeepSeek-R1-Distill-Qwen-14B / MATH, the paper's 14B layout: 5 nodes x 8 GPUs,
# node 1 serves vLLM rollouts, nodes 2-5 train (32 ranks, TP 4 x DP 8).
#   sbatch launch/igrpo_14b.sh [section.key=value ...]
# Submit from the repository root; knobs are listed at the top of launch/common.sh.
#SBATCH --job-name=igrpo-14b
#SBATCH --nodes=5
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=96:00:00
#SBATCH --output=%x-%j.out
# Time limit: SIGUSR1 15 min before it, then checkpoint and requeue (launch/common.sh).
#SBATCH --signal=B:USR1@900
#SBATCH --requeue
#SBATCH --open-mode=append

CONFIG=${CONFIG:-configs/r1d14b_math_igrpo.yaml}
source "${IGRPO_ROOT:-$SLURM_SUBMIT_DIR}/launch/common.sh"
igrpo_run "$@"
