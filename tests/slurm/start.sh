#!/bin/bash
# Start a single-node Slurm (slurmctld + slurmd on localhost) with all its state under $1,
# installing Debian's slurm-wlm and munge first when they are missing. Needs root.
# Every node advertises 8 `gpu` GRES (stand-in device files), so the launch scripts' `--gpus-per-node=8`
# is schedulable on a CPU machine. Prints the SLURM_CONF path on its last line.
#
# `start.sh STATE_DIR N` starts N nodes n1..nN instead, one network namespace each (10.200.0.i,
# own hostname and /etc/hosts), with slurmctld and the client commands in a hub namespace
# (10.200.0.254, a bridge): real distinct hosts, where 127.0.0.1 on one node does not reach
# another. Clients run as `$(cat STATE_DIR/client) sbatch ...` (nsenter into the hub; see
# ../shared/notes/slurm_multinode_requeue.md for why nsenter and not `ip netns exec`).
#
# Everything is private to $1, so that two test sessions on one machine do not meet: its own
# munged (own socket and key), free TCP ports for slurmctld and slurmd. The timings are the fast
# ones of ../shared/notes/slurm_multinode_requeue.md (KillWait=5, cred_expire=5, a scheduler pass
# every 2 s): a requeued job starts again ~10 s after `scontrol requeue` instead of ~3.5 min.
set -euo pipefail
D=$(realpath -m "${1:?usage: start.sh STATE_DIR [NODES]}")
NODES=${2:-0}
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

cpus=$(nproc)
mem=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
if (( NODES )); then
  # Private namespaces: the default ports cannot meet anyone else's.
  ctld_host="ctl(10.200.0.254)" ctld_port=6817 slurmd_port=6818
  names=$(seq -f "n%g" -s, 1 "$NODES")
  nodes=$(for i in $(seq "$NODES"); do
    echo "NodeName=n$i NodeAddr=10.200.0.$i CPUs=$cpus RealMemory=$(( mem / NODES )) Gres=gpu:8 State=UNKNOWN"
  done)
else
  read -r ctld_port slurmd_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
  ctld_host=localhost names=localhost
  nodes="NodeName=localhost CPUs=$cpus RealMemory=$mem Gres=gpu:8 State=UNKNOWN"
fi
cat >"$D/slurm.conf" <<CONF
ClusterName=igrpotest
SlurmctldHost=$ctld_host
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
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.%n.log
$nodes
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# Slurm counts GPUs by their device files; 8 character devices aliasing /dev/null stand in.
mkdir -p "$D/dev"
for i in $(seq 0 7); do [ -c "$D/dev/gpu$i" ] || mknod "$D/dev/gpu$i" c 1 3; done
echo "NodeName=$names Name=gpu File=$D/dev/gpu[0-7]" >"$D/gres.conf"
export SLURM_CONF=$D/slurm.conf

if (( NODES )); then
  # Namespace names carry this script's pid: two sessions' clusters never share one.
  P=igs$$
  echo "$P" >"$D/netns"
  ip netns add "$P-hub"
  ip -n "$P-hub" link set lo up
  ip -n "$P-hub" link add "$P-br" type bridge
  ip -n "$P-hub" addr add 10.200.0.254/24 dev "$P-br"
  ip -n "$P-hub" link set "$P-br" up
  { echo "127.0.0.1 localhost"; echo "10.200.0.254 ctl"; } >"$D/hosts"
  for i in $(seq "$NODES"); do
    ip netns add "$P-n$i"
    ip -n "$P-n$i" link set lo up
    ip -n "$P-hub" link add "$P-h$i" type veth peer name eth0 netns "$P-n$i"
    ip -n "$P-hub" link set "$P-h$i" master "$P-br" up
    ip -n "$P-n$i" addr add "10.200.0.$i/24" dev eth0
    ip -n "$P-n$i" link set eth0 up
    echo "10.200.0.$i n$i" >>"$D/hosts"
  done
  # Each daemon in its namespace with its own hostname and /etc/hosts; jobs inherit both.
  in_ns() { nsenter --net="/run/netns/$1" unshare --mount --uts --propagation private \
              bash -c "hostname $2 && mount --bind $D/hosts /etc/hosts && exec ${*:3}"; }
  in_ns "$P-hub" ctl slurmctld
  for i in $(seq "$NODES"); do mkdir -p "$D/spool/n$i"; in_ns "$P-n$i" "n$i" slurmd -N "n$i"; done
  echo "nsenter --net=/run/netns/$P-hub" >"$D/client"
else
  mkdir -p "$D/spool/localhost"
  slurmctld
  slurmd -N localhost
  : >"$D/client"
fi
CLIENT=$(cat "$D/client")
for _ in $(seq 100); do
  [ "$($CLIENT sinfo -h -o %T 2>/dev/null | sort -u)" = idle ] && break
  sleep 0.1
done
[ "$($CLIENT sinfo -h -o %T | sort -u)" = idle ] || { echo "start.sh: nodes not idle; see $D/log" >&2; exit 1; }
echo "$SLURM_CONF"
