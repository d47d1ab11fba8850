#!/bin/bash
# Start a single-node Slurm (slurmctld + slurmd on localhost) with all its state under $1,
# installing Debian's slurm-wlm and munge first when they are missing. Needs root.
# The node advertises 8 `gpu` GRES (stand-in device files), so the launch scripts' `--gpus-per-node=8`
# is schedulable on a CPU machine. Prints the SLURM_CONF path on its last line.
#
# Everything is private to $1, so that two test sessions on one machine do not meet: its own
# munged (own socket and key), free TCP ports for slurmctld and slurmd. The timings are the fast
# ones of ../shared/notes/slurm_multinode_requeue.md (KillWait=5, cred_expire=5, a scheduler pass
# every 2 s): a requeued job starts again ~10 s after `scontrol requeue` instead of ~3.5 min.
set -euo pipefail
D=$(realpath -m "${1:?usage: start.sh STATE_DIR}")
[ "$(id -u)" = 0 ] || { echo "start.sh: needs root (slurmd and munged)" >&2; exit 77; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
mkdir -p "$D/state" "$D/spool" "$D/log" "$D/munge"
# munged refuses a socket whose every parent folder is not world-searchable (pytest's temporary
# folders are 0700), so the socket lives in a folder of its own under /tmp, named in $D/munge/run.
RUN=$(mktemp -d /tmp/igrpo-munge.XXXXXX)
chmod 0755 "$RUN"; echo "$RUN" >"$D/munge/run"; chmod 0700 "$D/munge"
SOCK=$RUN/munge.sock
[ -s "$D/munge/munge.key" ] || mungekey --create --keyfile="$D/munge/munge.key"
/usr/sbin/munged --socket="$SOCK" --key-file="$D/munge/munge.key" --log-file="$D/munge/munged.log" \
  --pid-file="$RUN/munged.pid" --seed-file="$D/munge/munged.seed"
munge -S "$SOCK" -n | unmunge -S "$SOCK" >/dev/null

read -r ctld_port slurmd_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
cpus=$(nproc)
mem=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
cat >"$D/slurm.conf" <<CONF
ClusterName=igrpotest
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCK,cred_expire=5
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
KillWait=5
MinJobAge=300
SchedulerParameters=bf_interval=1,sched_interval=2
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

slurmctld
slurmd -N localhost
for _ in $(seq 100); do
  [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break
  sleep 0.1
done
[ "$(sinfo -h -o %T)" = idle ] || { echo "start.sh: node not idle; see $D/log" >&2; exit 1; }
echo "$SLURM_CONF"
