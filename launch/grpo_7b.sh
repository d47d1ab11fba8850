#!/bin/bash
# The GRPO baseline (group of 8, no drafts) in the same 7B layout as launch/igrpo_7b.sh.
#   sbatch launch/grpo_7b.sh [section.key=value ...]
#SBATCH --job-name=grpo-7b
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

CONFIG=${CONFIG:-configs/r1d7b_math_grpo.yaml}
source "${IGRPO_ROOT:-$SLURM_SUBMIT_DIR}/launch/common.sh"
igrpo_run "$@"
