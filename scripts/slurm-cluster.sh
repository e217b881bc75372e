#!/usr/bin/env bash
# A throw-away one-node Slurm cluster (Debian slurm-wlm + munge) for tests and CI.
#
#   bash scripts/slurm-cluster.sh install   # apt-get slurmctld slurmd slurm-client munge (only if missing)
#   bash scripts/slurm-cluster.sh start     # config + daemons under a state dir; waits for the node to be idle
#   bash scripts/slurm-cluster.sh status    # pids, sinfo, squeue
#   bash scripts/slurm-cluster.sh stop      # stops only the daemons that `start` started (pid files)
#
# `start` writes .cache/slurm/env (KEY=VALUE lines, e.g. SLURM_CONF=...) in the repository; tests
# read it, shells can `set -a; . .cache/slurm/env; set +a`. Nothing in /etc/slurm or /etc/munge is
# used, no systemd units are started and no cgroups are needed. Must run as root (slurmd launches
# job steps as the submitting user).
#
# Environment:
#   EMOEXP_SLURM_DIR    state dir (default /tmp/emoexp-slurm-<hash of the repo path>: one per checkout)
#   EMOEXP_SLURM_PORT   first port to try for slurmctld (default 6817; slurmd uses the next free one)
#   EMOEXP_SLURM_CPUS   CPUs to declare for the node (default: what `slurmd -C` detects)
#   EMOEXP_SLURM_WAIT   seconds to wait for the node to become idle (default 60)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${EMOEXP_SLURM_DIR:-/tmp/emoexp-slurm-$(printf '%s' "$ROOT" | sha256sum | cut -c1-8)}
ENV_FILE=$ROOT/.cache/slurm/env
CONF=$DIR/slurm.conf
SOCK=$DIR/munge/socket
NODE=$(hostname -s)
PKGS=(slurmctld slurmd slurm-client munge)

say() { echo "[slurm-cluster] $*"; }
die() { echo "[slurm-cluster] ERROR: $*" >&2; exit 1; }
clock() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(clock)" 'BEGIN { printf "%.1f", b - a }'; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (slurmd launches job steps; try: sudo bash $0 $1)"; }

have_all() {
  local c
  for c in slurmctld slurmd sbatch squeue sinfo scontrol munged mungekey munge unmunge; do
    command -v "$c" >/dev/null 2>&1 || return 1
  done
}

cmd_install() {
  if have_all; then say "already installed: $(slurmd -V)"; return 0; fi
  need_root install
  command -v apt-get >/dev/null || die "apt-get not found: install ${PKGS[*]} with your package manager"
  local t0 log policy_added=0
  t0=$(clock); log=$(mktemp /tmp/slurm-cluster-apt.XXXXXX.log)
  # Keep dpkg from starting the packages' system services (our daemons run from our own config).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_added=1
  fi
  local ok=1
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${PKGS[@]}" >"$log" 2>&1; then
    apt-get update -q >>"$log" 2>&1 && apt-get install -y -q --no-install-recommends "${PKGS[@]}" >>"$log" 2>&1 || ok=0
  fi
  [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ "$ok" = 0 ] || ! have_all; then tail -n 30 "$log" >&2; die "apt-get install ${PKGS[*]} failed (log: $log)"; fi
  rm -f "$log"
  say "installed $(slurmd -V) in $(elapsed "$t0")s"
}

# pid from a pid file, only if that process is still the program we started
pid_of() { # <pidfile> <comm>
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$2" ]; then echo "$pid"; fi
}

wait_exit() { # <pid> <seconds>
  local i
  for ((i = 0; i < $2 * 10; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}

cmd_stop() {
  local t0 ctld i
  t0=$(clock)
  ctld=$(pid_of "$DIR/run/slurmctld.pid" slurmctld)
  if [ -n "$ctld" ] && [ -f "$CONF" ]; then
    # cancel our jobs first: slurmstepd (and the job's processes) would outlive slurmd
    SLURM_CONF=$CONF scancel --quiet --user="$(id -un)" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      [ -z "$(SLURM_CONF=$CONF squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  # each daemon takes ~2 s to exit on SIGTERM: signal all three, then wait for each
  local pids=() spec pid
  for spec in run/slurmd:slurmd run/slurmctld:slurmctld munge/munged:munged; do
    pid=$(pid_of "$DIR/${spec%%:*}.pid" "${spec#*:}")
    [ -n "$pid" ] && { kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid:${spec#*:}"); }
  done
  for spec in "${pids[@]}"; do
    wait_exit "${spec%%:*}" 15 || { say "${spec#*:} (${spec%%:*}) still alive after SIGTERM: SIGKILL"
                                    kill -KILL "${spec%%:*}" 2>/dev/null || true; }
  done
  rm -f "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$DIR/munge/munged.pid"
  rm -f "$ENV_FILE"
  say "stopped in $(elapsed "$t0")s"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() { # <first> [<not this one>]
  local p=$1
  while port_busy "$p" || [ "$p" = "${2:-}" ]; do
    p=$((p + 1)); [ "$p" -lt $(($1 + 200)) ] || die "no free port in $1..$p"
  done
  echo "$p"
}

write_conf() { # <ctld port> <slurmd port>
  local topo
  if [ -n "${EMOEXP_SLURM_CPUS:-}" ]; then
    topo="CPUs=$EMOEXP_SLURM_CPUS"
  else
    # the topology slurmd itself detects, so the node is not drained for "differs from hardware"
    topo=$(slurmd -C | head -n1 | grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' | xargs)
  fi
  cat >"$CONF" <<EOF
# written by scripts/slurm-cluster.sh start
ClusterName=emoexp
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$1
SlurmdPort=$2
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=5
Waittime=0
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 $topo RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  echo "$topo"
}

show_logs() {
  local f
  for f in "$DIR/munge/munged.log" "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log"; do
    [ -f "$f" ] && { echo "----- $f (last 20 lines)" >&2; tail -n 20 "$f" >&2; }
  done
  return 0
}

cmd_start() {
  need_root start
  have_all || die "Slurm/munge not installed: run 'bash $0 install' first"
  cmd_stop >/dev/null          # a previous run of ours, if any
  local t0 ctld_port slurmd_port topo state="" i
  t0=$(clock)
  rm -rf "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
  mkdir -p "$DIR"/{state,spool,log,run,munge,jobs}
  chmod 755 "$DIR" "$DIR/munge"
  chmod 1777 "$DIR/jobs"
  [ -s "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null
  chmod 600 "$DIR/munge/munge.key"
  ctld_port=$(free_port "${EMOEXP_SLURM_PORT:-6817}")
  slurmd_port=$(free_port $((ctld_port + 1)) "$ctld_port")
  topo=$(write_conf "$ctld_port" "$slurmd_port")

  munged --socket="$SOCK" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
    --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || { show_logs; die "munged did not start"; }
  munge -n -S "$SOCK" | unmunge -S "$SOCK" >/dev/null 2>&1 || { show_logs; die "munge credential self-test failed"; }
  slurmctld -f "$CONF" || { show_logs; die "slurmctld did not start"; }
  slurmd -f "$CONF" -N "$NODE" || { show_logs; die "slurmd did not start"; }

  local wait_s=${EMOEXP_SLURM_WAIT:-60}
  for ((i = 0; i < wait_s * 5; i++)); do
    state=$(SLURM_CONF=$CONF sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true)
    [ "$state" = idle ] && break
    sleep 0.2
  done
  if [ "$state" != idle ]; then
    SLURM_CONF=$CONF sinfo -R >&2 || true
    show_logs
    cmd_stop >/dev/null
    die "node $NODE not idle after ${wait_s}s (state: '${state:-no answer}'); daemons stopped"
  fi
  mkdir -p "$(dirname "$ENV_FILE")"
  cat >"$ENV_FILE" <<EOF
SLURM_CONF=$CONF
EMOEXP_SLURM_DIR=$DIR
EMOEXP_SLURM_JOBS=$DIR/jobs
EOF
  say "node $NODE idle ($topo; ports $ctld_port/$slurmd_port) after $(elapsed "$t0")s"
  say "env for clients written to $ENV_FILE; in a shell: export SLURM_CONF=$CONF"
}

cmd_status() {
  local name pid rc=0
  for name in munge/munged run/slurmctld run/slurmd; do
    pid=$(pid_of "$DIR/$name.pid" "$(basename "$name")")
    echo "$(basename "$name"): ${pid:-not running}"
    [ -n "$pid" ] || rc=1
  done
  echo "state dir: $DIR"
  if [ "$rc" = 0 ]; then
    echo "SLURM_CONF=$CONF"
    SLURM_CONF=$CONF sinfo || rc=1
    SLURM_CONF=$CONF squeue || rc=1
  fi
  return "$rc"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: bash $0 install|start|stop|status" >&2; exit 2 ;;
esac
