#!/bin/bash
# Stand-in for srun with the pyxis plugin, which cannot be installed here: appends its command
# line to $SRUN_LOG (one line per step), then runs the real srun without the --container-*
# options pyxis would have consumed, so that the job still runs end to end on the host.
printf '%s\n' "$*" >>"${SRUN_LOG:?}"
args=()
for a in "$@"; do
  case $a in --container-image=* | --container-mounts=* | --container-workdir=*) ;; *) args+=("$a") ;; esac
done
exec srun "${args[@]}"
