# Helpers shared by the sbatch scripts in launch/: source it, then call igrpo_run.
#
# Layout of a job: the first $ROLLOUT_NODES nodes of the allocation run vLLM servers
# (launch/serve_node.sh, one per GPU group), the remaining nodes run ONE torchrun each
# (c10d rendezvous on the first training node), and torchrun starts one trainer rank per GPU.
# Servers and trainer share a per-job API key generated here. It travels only in the job's
# environment ($IGRPO_ROLLOUT_API_KEY, which srun passes on and igrpo-serve / igrpo-train read),
# never on a command line (visible in ps) and never in a log.
#
# Time limits: the sbatch scripts ask Slurm for SIGUSR1 some time before the limit
# (`#SBATCH --signal=B:USR1@900`; `sbatch --signal=B:USR1@<seconds>` overrides it). This script
# forwards it to the trainer step; the ranks finish the step in flight, save a checkpoint and exit
# with 75 (igrpo_megatron/preemption.py); the script then stops the servers and runs
# `scontrol requeue`. The requeued job (SLURM_RESTART_COUNT=1, 2, ...) runs this script again and
# the trainer resumes from that checkpoint, in the same run folder and metrics file. Ask for at
# least one step plus one checkpoint save, and no less than 30 s: Slurm checks limits about every
# 30 s, so the warning comes up to ~30 s earlier than asked, and one asked for less can come too
# late. A job that reaches its limit is killed and NOT requeued. SIGTERM (scancel, preemption)
# also saves if the step in flight ends within 20 s.
#
# Knobs (environment variables; defaults are the paper's 7B layout, 2 nodes x 8 GPUs):
#   CONFIG            run config (configs/*.yaml)                        [required]
#   ROLLOUT_NODES     nodes that only serve rollouts; 0 puts the servers on the first
#                     training node beside the trainer (a CPU machine, a single-node test)   [1]
#   GPUS_PER_NODE     trainer ranks per training node (torchrun --nproc_per_node)          [8]
#   SERVERS_PER_NODE  vLLM servers per rollout node       [GPUS_PER_NODE / rollout.tensor_parallel_size]
#   VENV              virtual environment with the project installed   [$IGRPO_ROOT/.venv]
#   RDZV_PORT         torchrun c10d rendezvous port on the first training node              [29500]
#   SERVER_TIMEOUT_S  seconds to wait for every server's /health    [rollout.startup_timeout_s]
#   LOG_ROOT          a folder per job is made under it for the server logs  [$IGRPO_ROOT/logs]
#   STOP_TIMEOUT_S    grace period for the servers to shut down at the end of the job       [60]
#   MAX_REQUEUES      requeues after a time-limit checkpoint before the job stops asking     [10]
#   WARN_RESEND_S     seconds between repeats of the forwarded warning until the trainer stops [30]
#   SERVE_CMD         the server command (tests swap in a stand-in)   [$PY -m igrpo_megatron.cli.serve]
#   CONTAINER_IMAGE   run every step in this image with pyxis, e.g. nvcr.io#nvidia/pytorch:25.09-py3
#                     or a squashfs file; unset: bare metal                                      []
#   CONTAINER_MOUNTS  extra pyxis mounts, SRC:DST[,SRC:DST...] (models, data, the HF cache);
#                     the repository is always mounted at its own path                        []
#   IGRPO_SRUN        the srun command (tests record the command lines through a stand-in)   [srun]
#   TRAIN_ENTRY       what torchrun runs                            [-m igrpo_megatron.cli.train]
# Extra arguments of the sbatch script are config overrides for both the servers and the trainer.

IGRPO_ROOT=${IGRPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}

igrpo_log() { echo "[igrpo $(date -u +%H:%M:%S)] $*" >&2; }
igrpo_die() { igrpo_log "error: $*"; exit 1; }

# Every job step starts here. With CONTAINER_IMAGE set it runs in that image through pyxis
# (the srun plugin of NVIDIA's clusters): the repository mounted at its own path and used as
# the working directory, plus CONTAINER_MOUNTS. Never Slurm's own --container, which without
# an oci.conf runs the step on the host and only logs an error.
# The srun client starts with SIGUSR1 ignored: Slurm's time-limit warning may reach the batch
# step's other processes too, and an srun killed by it would orphan its step.
igrpo_srun() {
  local -a pyxis=()
  [ -z "${CONTAINER_IMAGE:-}" ] || pyxis=(--container-image="$CONTAINER_IMAGE"
    --container-mounts="$IGRPO_ROOT:$IGRPO_ROOT${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"
    --container-workdir="$IGRPO_ROOT")
  (trap '' USR1; exec "$IGRPO_SRUN" "${pyxis[@]}" "$@")
}

# Step ids of this job whose name matches the awk regex $1.
igrpo_steps() { squeue -h -s -j "$SLURM_JOB_ID" -o '%i %j' 2>/dev/null | awk -v re="$1" '$2 ~ re {print $1}'; }

# SIGUSR1 to every process of the trainer step (through slurmd, not through the srun client).
igrpo_signal_trainer() {
  local step
  for step in $(igrpo_steps '^igrpo-train$'); do scancel --signal=USR1 "$step" 2>/dev/null || true; done
}

# Read the settings the launcher needs from the run config; this also validates the config
# (and the overrides) before any node starts anything. In a container the batch shell's host
# may lack the project's Python, so the check runs as a one-task step in the image.
igrpo_read_config() {
  local out
  local -a run=("$PY")
  [ -z "${CONTAINER_IMAGE:-}" ] || run=(igrpo_srun --job-name=igrpo-config --nodes=1 --ntasks=1 "$PY")
  out=$("${run[@]}" - "$CONFIG" "$@" <<'EOF'
import sys
from igrpo_megatron.config import ConfigError, load_config
try:
    r = load_config(sys.argv[1], sys.argv[2:]).rollout
except ConfigError as e:
    sys.exit(f"config error: {e}")
from igrpo_megatron.preemption import REQUEUE_EXIT_CODE
print(r.tensor_parallel_size, r.port, int(r.startup_timeout_s), r.refit_transport, REQUEUE_EXIT_CODE)
EOF
  ) || igrpo_die "$CONFIG (with overrides: $*) does not load; see above"
  read -r CFG_SERVER_TP CFG_PORT CFG_STARTUP_S CFG_REFIT CFG_REQUEUE_EXIT <<<"$out"
}

# Split the allocation: ROLLOUT_HOSTS (serve) and TRAIN_HOSTS (torchrun), as bash arrays.
igrpo_split_nodes() {
  local hosts
  mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  local n=${#hosts[@]} r=$ROLLOUT_NODES
  (( r < n )) || igrpo_die "ROLLOUT_NODES=$r leaves no training node in a $n-node job; request more nodes (sbatch --nodes) or lower ROLLOUT_NODES"
  if (( r == 0 )); then
    ROLLOUT_HOSTS=("${hosts[0]}")
  else
    ROLLOUT_HOSTS=("${hosts[@]:0:r}")
  fi
  TRAIN_HOSTS=("${hosts[@]:r}")
}

# 64 hex characters from the kernel's CSPRNG, exported only into this job's environment.
igrpo_new_api_key() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

# One background srun step per rollout host; each runs serve_node.sh, which starts the servers.
# Sets SERVER_URLS (bash array) and SERVE_PIDS.
igrpo_start_servers() {
  SERVER_URLS=() SERVE_PIDS=()
  local host i
  for host in "${ROLLOUT_HOSTS[@]}"; do
    for (( i = 0; i < SERVERS_PER_NODE; i++ )); do
      SERVER_URLS+=("http://$host:$(( CFG_PORT + i ))")
    done
    # --overlap: with ROLLOUT_NODES=0 the trainer's step shares this node.
    igrpo_srun --overlap --job-name=igrpo-serve --nodes=1 --ntasks=1 --nodelist="$host" \
      bash "$IGRPO_ROOT/launch/serve_node.sh" "$@" &
    SERVE_PIDS+=($!)
  done
  igrpo_log "servers: ${SERVER_URLS[*]} (logs in $LOG_DIR)"
}

# Poll every server's /health (behind the key, like every route) until all answer; fail early
# if a server step died. curl reads the header from stdin (-K -) to keep the key out of ps.
igrpo_wait_servers() {
  local deadline=$(( SECONDS + SERVER_TIMEOUT_S )) url pid
  for url in "${SERVER_URLS[@]}"; do
    until printf 'header = "Authorization: Bearer %s"\n' "$IGRPO_ROLLOUT_API_KEY" |
        curl -K - -sf -o /dev/null --max-time 5 "$url/health"; do
      for pid in "${SERVE_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || igrpo_die "a server step exited before $url was healthy; see $LOG_DIR/serve_*.log"
      done
      (( SECONDS < deadline )) || igrpo_die "$url not healthy after ${SERVER_TIMEOUT_S}s; see $LOG_DIR/serve_*.log"
      sleep 2
    done
  done
  igrpo_log "all ${#SERVER_URLS[@]} servers healthy"
}

# On any exit: SIGTERM every process of the server steps (scancel on the step; a signal to the
# srun client itself makes srun SIGKILL the step, with no graceful vLLM shutdown) and of the
# trainer step if it is still running; give them $STOP_TIMEOUT_S seconds, then kill what is left.
igrpo_cleanup() {
  local steps step pid left=0
  steps=$(igrpo_steps '^igrpo-(serve|train)$')
  for step in $steps; do scancel --signal=TERM "$step" 2>/dev/null || true; done
  for _ in $(seq "${STOP_TIMEOUT_S:-60}"); do
    left=0
    for pid in "${SERVE_PIDS[@]}" ${TRAIN_PID:-}; do kill -0 "$pid" 2>/dev/null && left=1; done
    (( left )) || break
    sleep 1
  done
  if (( left )); then
    igrpo_log "steps still running after ${STOP_TIMEOUT_S:-60}s; killing them"
    for step in $steps; do scancel --signal=KILL "$step" 2>/dev/null || true; done
  else
    igrpo_log "servers stopped"
  fi
}

# SIGUSR1 from Slurm, the time-limit warning: pass it on to the trainer step, whose ranks then
# save and exit with $CFG_REQUEUE_EXIT. A rank still starting up ignores it (the disposition it
# inherits until it installs its handler), so it is sent again every $WARN_RESEND_S seconds
# until the trainer exits.
igrpo_on_warning() {
  STOP_WARNED=$(( STOP_WARNED + 1 ))
  if [ -n "${TRAIN_PID:-}" ]; then
    igrpo_log "SIGUSR1 (time-limit warning): the trainer checkpoints after its current step and stops"
    igrpo_signal_trainer
    [ -n "${RESEND_PID:-}" ] ||
      { while sleep "$WARN_RESEND_S" && kill -0 "$TRAIN_PID" 2>/dev/null; do igrpo_signal_trainer; done & RESEND_PID=$!; }
  else
    igrpo_log "SIGUSR1 (time-limit warning) before the trainer started: requeueing without starting it"
  fi
}

# Wait for the trainer step. A trapped signal makes `wait` return early (status 128 + signal)
# and run the trap, which counts in STOP_WARNED; then wait again (a step that has ended by then
# returns its own status).
igrpo_wait_trainer() {
  local rc warned
  while :; do
    rc=0 warned=$STOP_WARNED
    wait "$TRAIN_PID" || rc=$?
    (( rc > 128 && STOP_WARNED != warned )) || break
  done
  TRAIN_RC=$rc
}

# The trainer stopped at a checkpoint: stop the servers, then requeue this job (same script,
# arguments and environment), unless it has already been requeued $MAX_REQUEUES times.
igrpo_requeue() {
  local n=${SLURM_RESTART_COUNT:-0}
  if (( n >= MAX_REQUEUES )); then
    igrpo_log "not requeueing: the job already restarted $n times (MAX_REQUEUES=$MAX_REQUEUES); sbatch it again to continue from its checkpoint"
    return "$CFG_REQUEUE_EXIT"
  fi
  igrpo_cleanup
  SERVE_PIDS=()
  igrpo_log "requeueing job $SLURM_JOB_ID (restart $(( n + 1 )) of at most $MAX_REQUEUES); it resumes from the checkpoint"
  scontrol requeue "$SLURM_JOB_ID" ||
    igrpo_die "scontrol requeue was refused (submitted with --no-requeue?); sbatch the job again to continue from its checkpoint"
}

# The whole job. Arguments: extra trainer overrides.
igrpo_run() {
  set -euo pipefail
  [ -n "${CONFIG:-}" ] || igrpo_die "set CONFIG to a run config, e.g. CONFIG=configs/r1d7b_math_igrpo.yaml sbatch $0"
  [ -n "${SLURM_JOB_ID:-}" ] || igrpo_die "run this script with sbatch (it needs a Slurm allocation)"
  cd "$IGRPO_ROOT"
  [ -f "$CONFIG" ] || igrpo_die "CONFIG=$CONFIG does not exist (paths are relative to $IGRPO_ROOT)"
  VENV=${VENV:-$IGRPO_ROOT/.venv}
  PY=${PY:-$VENV/bin/python}
  # (in a container $PY is the image's: it need not exist on the host)
  [ -n "${CONTAINER_IMAGE:-}" ] || [ -x "$PY" ] ||
    igrpo_die "no python at $PY; set VENV to the virtual environment holding igrpo-megatron"
  ROLLOUT_NODES=${ROLLOUT_NODES:-1}
  IGRPO_SRUN=${IGRPO_SRUN:-srun}
  GPUS_PER_NODE=${GPUS_PER_NODE:-8}
  RDZV_PORT=${RDZV_PORT:-29500}
  MAX_REQUEUES=${MAX_REQUEUES:-10}
  WARN_RESEND_S=${WARN_RESEND_S:-30}
  LOG_DIR=${LOG_ROOT:-$IGRPO_ROOT/logs}/${SLURM_JOB_NAME:-igrpo}-$SLURM_JOB_ID
  mkdir -p "$LOG_DIR"
  export LOG_DIR

  igrpo_read_config "$@"
  SERVERS_PER_NODE=${SERVERS_PER_NODE:-$(( GPUS_PER_NODE / CFG_SERVER_TP > 0 ? GPUS_PER_NODE / CFG_SERVER_TP : 1 ))}
  SERVER_TIMEOUT_S=${SERVER_TIMEOUT_S:-$CFG_STARTUP_S}
  export CONFIG SERVERS_PER_NODE CFG_SERVER_TP CFG_PORT PY
  export SERVE_CMD=${SERVE_CMD:-"$PY -m igrpo_megatron.cli.serve"}
  igrpo_split_nodes
  igrpo_log "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): rollout on ${ROLLOUT_HOSTS[*]} ($SERVERS_PER_NODE server(s) each, TP $CFG_SERVER_TP), training on ${TRAIN_HOSTS[*]} ($GPUS_PER_NODE ranks each)"

  # The nccl refit transport's rendezvous is the first trainer node, known only now.
  [ "$CFG_REFIT" = nccl ] && set -- "$@" "rollout.nccl_master_address=${TRAIN_HOSTS[0]}"
  IGRPO_ROLLOUT_API_KEY=$(igrpo_new_api_key)
  export IGRPO_ROLLOUT_API_KEY
  SERVE_PIDS=() TRAIN_PID='' RESEND_PID='' STOP_WARNED=0
  trap igrpo_cleanup EXIT
  trap 'exit 143' TERM INT
  trap igrpo_on_warning USR1
  igrpo_start_servers "$@"
  igrpo_wait_servers
  if (( STOP_WARNED )); then
    igrpo_requeue
    return
  fi

  local urls
  urls=$(IFS=,; echo "[${SERVER_URLS[*]}]")
  local -a entry
  read -r -a entry <<<"${TRAIN_ENTRY:--m igrpo_megatron.cli.train}"
  local -a cmd=(
    "$PY" -m igrpo_megatron.cli.torchrun
    --nnodes="${#TRAIN_HOSTS[@]}" --nproc_per_node="$GPUS_PER_NODE"
    --rdzv_backend=c10d --rdzv_endpoint="${TRAIN_HOSTS[0]}:$RDZV_PORT" --rdzv_id="$SLURM_JOB_ID"
    "${entry[@]}" --config "$CONFIG" "$@" "rollout.server_urls=$urls"
  )
  igrpo_log "trainer: ${cmd[*]}"
  # One torchrun per training node; in the background so that a TERM from scancel reaches the trap.
  # The step ignores SIGUSR1 from its first instant (bash's ignored disposition survives exec):
  # a warning must not kill torchrun before it has started (see igrpo_megatron/cli/torchrun.py).
  # --ntasks too: the job's own SLURM_NTASKS (one per node of the whole job) would override it.
  igrpo_srun --overlap --job-name=igrpo-train --nodes="${#TRAIN_HOSTS[@]}" --ntasks="${#TRAIN_HOSTS[@]}" \
    --ntasks-per-node=1 --nodelist="$(IFS=,; echo "${TRAIN_HOSTS[*]}")" \
    bash -c 'trap "" USR1; exec "$@"' igrpo-train "${cmd[@]}" &
  TRAIN_PID=$!
  igrpo_wait_trainer
  TRAIN_PID=
  [ -z "$RESEND_PID" ] || kill "$RESEND_PID" 2>/dev/null || true
  igrpo_log "trainer exited with status $TRAIN_RC"
  if (( TRAIN_RC == CFG_REQUEUE_EXIT )); then
    igrpo_requeue
    return
  fi
  return "$TRAIN_RC"
}
