# One Slurm task on a rollout node: start $SERVERS_PER_NODE vLLM servers, each on its own group
# of $CFG_SERVER_TP GPUs and on port $CFG_PORT + i, and stop them all when this task gets
# SIGTERM (the launcher's cleanup) or when any of them exits (a dead server fails the job).
# Started by igrpo_start_servers in common.sh, which exports everything this script reads;
# its arguments are the job's extra overrides (the same ones the trainer gets).
set -euo pipefail
host=${SLURMD_NODENAME:-$(hostname -s)}
pids=()
stop() {
  trap - TERM INT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap 'stop; exit 143' TERM INT
# The time-limit warning is the trainer's (a --signal without B: reaches every step); the
# servers started below inherit the ignored disposition.
trap '' USR1

for (( i = 0; i < SERVERS_PER_NODE; i++ )); do
  first=$(( i * CFG_SERVER_TP ))
  gpus=$(seq -s, "$first" $(( first + CFG_SERVER_TP - 1 )))
  # $SERVE_CMD is word-split on purpose: it is a command line such as "python -m pkg.serve".
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$gpus $SERVE_CMD --config "$CONFIG" "$@" \
    rollout.host=0.0.0.0 "rollout.port=$(( CFG_PORT + i ))" \
    >"$LOG_DIR/serve_${host}_$i.log" 2>&1 &
  pids+=($!)
done

# Returns as soon as one server exits, whatever its status.
rc=0
wait -n "${pids[@]}" || rc=$?
echo "serve_node.sh on $host: a server exited (status $rc); stopping the others" >&2
stop
exit $(( rc == 0 ? 1 : rc ))
