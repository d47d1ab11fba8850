#!/bin/bash
# Stop the Slurm started by start.sh with the same STATE_DIR (and munged, if start.sh started it).
D=$(realpath -m "${1:?usage: stop.sh STATE_DIR}")
export SLURM_CONF=$D/slurm.conf
scontrol shutdown 2>/dev/null || true
for _ in $(seq 100); do
  alive=0
  for f in "$D/slurmctld.pid" "$D/slurmd.pid"; do
    [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && alive=1
  done
  (( alive )) || break
  sleep 0.1
done
# scontrol needs munge; if that is gone, stop the daemons by their pid files.
for f in "$D/slurmctld.pid" "$D/slurmd.pid"; do
  [ -s "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true
done
if [ -e "$D/started_munged" ]; then
  munged --stop 2>/dev/null || true
  rm -f "$D/started_munged"
fi
