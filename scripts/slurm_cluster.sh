#!/usr/bin/env bash
# A SLURM cluster on this machine, for the tests that submit real jobs (tests/test_slurm.py): node <hostname>
# in the default partition `debug`, and a second slurmd on the same host, node <hostname>-2, which only the
# partition `two` (both nodes) reaches, for the multi-node jobs (Debian builds SLURM with multiple slurmd).
#   bash scripts/slurm_cluster.sh up      # install if missing, configure, start; returns once both nodes are idle
#   bash scripts/slurm_cluster.sh status  # sinfo of the running cluster (exit 1 if it is down)
#   bash scripts/slurm_cluster.sh down    # cancel every job, stop the daemons: nothing is left running
# Needs root and Debian/Ubuntu (apt's slurm-wlm, 22.05 on Debian 12, and munge). It writes
# /etc/slurm/slurm.conf (refusing to overwrite one it did not write) and keeps state, spool and logs under
# $CRDIFF_SLURM_DIR (default /var/tmp/crdiff-slurm). `.ci/run` brings it up around `make test`.
set -euo pipefail

DIR=${CRDIFF_SLURM_DIR:-/var/tmp/crdiff-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by crdiff scripts/slurm_cluster.sh"
HOST=$(hostname -s)

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  echo "slurm_cluster: installing slurm-wlm and munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge </dev/null >/dev/null
}

configure() {
  if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm_cluster: $CONF exists and was not written by this script; not touching a real cluster" >&2
    exit 1
  fi
  mkdir -p "$DIR"/{state,log} "$DIR/spool/$HOST" "$DIR/spool/$HOST-2" /etc/slurm
  if [[ ! -s /etc/munge/munge.key ]]; then  # the package usually made one; munged refuses a loose key
    mkdir -p /etc/munge
    head -c 1024 /dev/urandom >/etc/munge/munge.key
  fi
  chown -R munge:munge /etc/munge && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge && chown munge:munge /run/munge /var/lib/munge /var/log/munge
  # The node lines are slurmd's own reading of the hardware (CPUs, sockets, cores, memory), so they match;
  # the second node shares the first one's cores. AuthInfo=cred_expire: SLURM holds a requeued job this long
  # (default 120 s) before it may start again, and sched_interval (default 60 s) is how often it then looks:
  # 5 s each keeps the requeue tests short. KillWait: seconds from SIGTERM to SIGKILL when a job is cancelled
  # or requeued (default 30; submitit ignores SIGTERM, so the job works on until SIGKILL). No GRES (no GPUs)
  # and no accounting (sacct answers with an error; docs/scale-out.md).
  local node
  node=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
  cat >"$CONF" <<EOF
$MARK
ClusterName=crdiff
SlurmctldHost=$HOST
AuthType=auth/munge
AuthInfo=cred_expire=5
KillWait=5
SchedulerParameters=sched_interval=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SlurmUser=root
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
NodeName=$HOST NodeHostname=$HOST Port=6818 $node State=UNKNOWN
NodeName=$HOST-2 NodeHostname=$HOST Port=6819 $node State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=two Nodes=$HOST,$HOST-2 MaxTime=INFINITE State=UP
EOF
}

# Each daemon by its pid file: only the processes this script started are checked or stopped.
MUNGE_PID=/run/munge/munged.pid
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  install
  configure
  running $MUNGE_PID || su -s /bin/sh munge -c munged
  running "$DIR/slurmctld.pid" || slurmctld -c  # -c: a cold start, no jobs recovered from an earlier, killed cluster
  for node in "$HOST" "$HOST-2"; do
    running "$DIR/slurmd-$node.pid" || slurmd -N "$node"
  done
  for _ in $(seq 60); do
    if [[ $(sinfo -h -N -o %t 2>/dev/null | sort -u) == idle ]]; then
      echo "slurm_cluster: nodes $HOST, $HOST-2 idle ($(sinfo -h -N -n "$HOST" -o '%c CPUs, %m MB each' | head -1))"
      return
    fi
    sleep 1
  done
  echo "slurm_cluster: nodes not idle after 60 s; logs in $DIR/log" >&2
  sinfo >&2 || true
  exit 1
}

stop() {  # $1: pid file; SIGTERM, then wait for the process to exit
  running "$1" || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid"
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  if running "$DIR/slurmctld.pid"; then  # cancel every job first, so no job step outlives slurmd
    scancel --full --quiet --user root 2>/dev/null || true
    for _ in $(seq 30); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.5; done
  fi
  stop "$DIR/slurmd-$HOST.pid"
  stop "$DIR/slurmd-$HOST-2.pid"
  stop "$DIR/slurmctld.pid"
  stop $MUNGE_PID
  rm -rf "$DIR/state"  # the next cluster starts without the old jobs
  echo "slurm_cluster: down"
}

status() { sinfo && squeue; }

if [[ $(id -u) != 0 ]]; then
  echo "slurm_cluster: needs root (it installs packages, writes /etc/slurm and starts the daemons)" >&2
  exit 1
fi
case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
