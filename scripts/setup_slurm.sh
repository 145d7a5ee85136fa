#!/usr/bin/env bash
# Single-node SLURM for the SLURM launcher's tests, the way CI sets it up: Debian's slurm-wlm 22.05
# and munge, slurmctld and slurmd on this host, started directly (CI containers have no systemd).
# Idempotent: installs, writes and starts only what is missing; exits at once if SLURM answers.
set -euo pipefail

conf=/etc/slurm/slurm.conf
logs=/var/log/slurm
marker="# written by scripts/setup_slurm.sh"
see="see $logs/slurmctld.log and $logs/slurmd.log"
die() { echo "setup_slurm: $*" >&2; exit 1; }
node_ok() {  # sinfo answers and the node can run jobs
  timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}
summary() {
  echo "setup_slurm: SLURM up (${1}partition $(sinfo -h -o %P | tr -d '*' | paste -sd,)," \
       "$(sinfo -h -o %c | head -1) CPUs)"
}

# Config: this host is controller and only node, named by `hostname -s`, reached on loopback.
# CR_CPU counts hardware threads (CR_Core would give each 1-CPU task a whole core);
# OverSubscribe=FORCE:2 lets two jobs share a CPU, so small test arrays never wait for a free
# core. Without CR_Memory, --mem is only checked against RealMemory (a little under the real
# memory, or slurmd marks the node inval) and not reserved. EnforcePartLimits=ALL rejects at
# submit time what could never run (else it pends forever). KillWait=10 (default 30): a task
# that ignores SIGTERM blocks the node for KillWait. No accounting, so sacct fails; finished
# jobs stay in squeue -t all / scontrol show job for MinJobAge s, and sacct -c reads jobcomp.
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
new_conf="$marker
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$logs/jobcomp.log
ReturnToService=2
SlurmdTimeout=300
KillWait=10
MailProg=/bin/true
MinJobAge=3600
EnforcePartLimits=ALL
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2"

# Up = the node takes jobs and, on a cluster of ours, the config is current and all three daemons
# run here (slurmctld calls the node idle for SlurmdTimeout after slurmd dies; sinfo retries for
# ~10 s when slurmctld is down, so look at the processes first).
ours() { grep -qxF "$marker" "$conf" 2>/dev/null; }
daemons_up() { for d in munged slurmctld slurmd; do pgrep -x $d >/dev/null || return 1; done; }
current() { [ "$(cat "$conf" 2>/dev/null)" = "$new_conf" ]; }
if command -v sinfo >/dev/null 2>&1 && { ! ours || { daemons_up && current; }; } && node_ok; then
  summary "already running, "; exit 0
fi

sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
$sudo true 2>/dev/null || die "needs root or passwordless sudo"
as_munge() { if [ -z "$sudo" ]; then runuser -u munge -- "$@"; else sudo -n -u munge "$@"; fi; }

# --no-install-recommends: 9 packages instead of 42, none of the extra ones is needed here.
if ! dpkg-query -W -f '${Status}\n' slurmctld slurmd slurm-client munge 2>/dev/null \
    | grep -c 'install ok installed' | grep -qx 4; then
  command -v apt-get >/dev/null 2>&1 || die "no apt-get to install slurm-wlm and munge"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      $sudo apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; } \
    || die "apt-get install slurm-wlm munge failed"
fi

# munge authenticates every SLURM message; /run/munge is normally made by systemd-tmpfiles.
$sudo install -d -o munge -g munge -m 0755 /run/munge
if ! $sudo test -s /etc/munge/munge.key; then
  as_munge mungekey -c -k /etc/munge/munge.key || die "could not create /etc/munge/munge.key"
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  as_munge /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
fi

if [ ! -e "$conf" ] || ours; then
  if ! current; then
    printf '%s\n' "$new_conf" | $sudo tee "$conf" >/dev/null
    # a running slurmctld must reread it (changed CPUs/RealMemory need a restart of both)
    if pgrep -x slurmctld >/dev/null; then $sudo scontrol reconfigure || true; fi
  fi
else
  echo "setup_slurm: keeping $conf (not written by this script)"
fi
for d in /var/spool/slurmctld /var/spool/slurmd "$logs"; do
  $sudo install -d -o slurm -g slurm "$d"
done

# Both daemons fork into the background themselves; slurmd must run as root.
pgrep -x slurmctld >/dev/null || $sudo slurmctld || die "slurmctld did not start ($see)"
pgrep -x slurmd >/dev/null || $sudo slurmd || die "slurmd did not start ($see)"

# A node drained by an earlier config (or inval) stays so across restarts: resume ours once; if it
# falls back, the config does not fit the machine and waiting will not help.
resumed=""; deadline=$((SECONDS + 60))
while [ $SECONDS -lt $deadline ]; do
  node_ok && break
  case $(sinfo -h -o %T 2>/dev/null) in
    drain*|inval) { [ -z "$resumed" ] && ours; } || break
      resumed=1; $sudo scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
node_ok || die "node not ready: $(sinfo -h -o '%T %E' 2>&1 | head -1) ($see)"

# Smoke test: a 2-task array, run to completion, in a scratch submit dir (for slurm-*.out).
tmp=$(mktemp -d)
# shellcheck disable=SC2016  # $SLURM_ARRAY_TASK_ID is for the task's shell to expand
(cd "$tmp" && timeout 120 sbatch --array=0-1 --wait --wrap 'echo $SLURM_ARRAY_TASK_ID' \
   >/dev/null) || { rm -rf "$tmp"; die "smoke test sbatch --array=0-1 --wait failed ($see)"; }
out=$(cat "$tmp"/slurm-*_*.out 2>/dev/null | sort | tr -d '\n' || true)
rm -rf "$tmp"
[ "$out" = 01 ] || die "smoke test: array tasks printed '$out', not 0 and 1"
summary ""
