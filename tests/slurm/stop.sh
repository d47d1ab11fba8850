#!/bin/bash
# Stop the Slurm started by start.sh with the same STATE_DIR, and its private munged.
# Processes are stopped by their pid files only: another session's Slurm is left alone.
D=$(realpath -m "${1:?usage: stop.sh STATE_DIR}")
export SLURM_CONF=$D/slurm.conf
pids=()
for f in "$D"/slurmctld.pid "$D"/slurmd.*.pid; do [ -s "$f" ] && pids+=("$(cat "$f")"); done
# shellcheck disable=SC2046
$(cat "$D/client" 2>/dev/null) scontrol shutdown 2>/dev/null || true
for _ in $(seq 100); do
  alive=()
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
  (( ${#alive[@]} )) || break
  sleep 0.1
done
# scontrol needs slurmctld and munge; if either is gone, stop the daemons by their pids.
for p in "${alive[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
RUN=$(cat "$D/munge/run" 2>/dev/null || true)
mpid=$([ -n "$RUN" ] && cat "$RUN/munged.pid" 2>/dev/null || true)
if [ -n "$mpid" ]; then
  kill -TERM "$mpid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$mpid" 2>/dev/null || break; sleep 0.1; done
fi
case $RUN in /tmp/igrpo-munge.*) rm -rf "$RUN" ;; esac
# The namespaces of a multi-node start (named in $D/netns), once their daemons are gone.
P=$(cat "$D/netns" 2>/dev/null || true)
if [ -n "$P" ]; then
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-"); do ip netns del "$ns"; done
  rm -f "$D/netns"
fi
