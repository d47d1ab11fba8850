#!/bin/bash
# Start a single-node Slurm (slurmctld + slurmd on localhost) with all its state under $1,
# installing Debian's slurm-wlm and munge first when they are missing. Needs root.
# The node advertises 8 `gpu` GRES (stand-in device files), so the launch scripts' `--gpus-per-node=8`
# is schedulable on a CPU machine. Prints the SLURM_CONF path on its last line.
set -euo pipefail
D=$(realpath -m "${1:?usage: start.sh STATE_DIR}")
[ "$(id -u)" = 0 ] || { echo "start.sh: needs root (slurmd and munged)" >&2; exit 77; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
mkdir -p "$D/state" "$D/spool" "$D/log"
cpus=$(nproc)
mem=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
cat >"$D/slurm.conf" <<CONF
ClusterName=igrpotest
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
NodeName=localhost CPUs=$cpus RealMemory=$mem Gres=gpu:8 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# Slurm counts GPUs by their device files; 8 character devices aliasing /dev/null stand in.
mkdir -p "$D/dev"
for i in $(seq 0 7); do [ -c "$D/dev/gpu$i" ] || mknod "$D/dev/gpu$i" c 1 3; done
echo "NodeName=localhost Name=gpu File=$D/dev/gpu[0-7]" >"$D/gres.conf"
export SLURM_CONF=$D/slurm.conf

# munged must run as the munge user, with its socket folder present (no systemd here).
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  touch "$D/started_munged"
fi
munge -n | unmunge >/dev/null

slurmctld
slurmd -N localhost
for _ in $(seq 100); do
  [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break
  sleep 0.1
done
[ "$(sinfo -h -o %T)" = idle ] || { echo "start.sh: node not idle; see $D/log" >&2; exit 1; }
echo "$SLURM_CONF"
