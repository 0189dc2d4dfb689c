#!/usr/bin/env bash
# slurm-local.sh — the local SLURM test fixture: a real scheduler on this one machine, for the project's tests.
#
# It is NOT a way to run a cluster of your own: it fakes two nodes (n1, n2) on 127.0.0.1, each with one fake
# GPU (/dev/null), runs every daemon as root with no cgroups and no systemd, and keeps all its state in one
# throw-away folder. Users send the workflow to their site's SLURM with `--profile pipelines/profiles/slurm`.
#
#   slurm-local.sh install   apt-get the Debian packages (slurm-wlm, slurm-client, slurmdbd, munge,
#                            mariadb-server); skips what is already installed
#   slurm-local.sh start     write the config and start munged, MariaDB, slurmdbd, slurmctld, slurmd n1 and n2
#                            (a clean cluster each time: no queue, no accounting records left from before)
#   slurm-local.sh stop      cancel what is queued, stop every daemon by its recorded PID, TERM then KILL
#   slurm-local.sh status    sinfo and, per daemon, alive or not; exit 0 only when healthy
#   slurm-local.sh env       the variables a client needs, as `export` lines: eval "$(slurm-local.sh env)"
#
# Exit codes: 0 done; 1 failed (the message names the daemon's log); 2 bad usage or setting; 3 not possible
# on this machine (not root, no apt-get, packages not installed): a test or Makefile target can skip on 3.
#
# Settings (environment variables):
#   FP8BENCH_SLURM_DIR        state folder: config, logs, PIDs, spool, database      [/tmp/fp8bench-slurm]
#   FP8BENCH_SLURM_PORT_BASE  first of five TCP ports: slurmctld, slurmdbd, MariaDB, slurmd n1, slurmd n2
#                             (all on 127.0.0.1)                                      [26817]
#   FP8BENCH_SLURM_CPUS       CPUs of each fake node                                  [nproc]
#   FP8BENCH_SLURM_MEM_MB     RealMemory of each fake node in MB                      [half of MemTotal, -5%]
#   FP8BENCH_SLURM_TIMEOUT    seconds to wait for each daemon to come up / go away    [30]
#
# Partitions "local" (the default) and "gpu" (the one pipelines/profiles/slurm names for training), both over
# n1 and n2; account "fp8bench" (every user's default), cluster "fp8bench".
set -uo pipefail

STATE=${FP8BENCH_SLURM_DIR:-/tmp/fp8bench-slurm}
PORT_BASE=${FP8BENCH_SLURM_PORT_BASE:-26817}
TIMEOUT=${FP8BENCH_SLURM_TIMEOUT:-30}
CLUSTER=fp8bench
ACCOUNT=fp8bench
PARTITION=local
PACKAGES=(slurm-wlm slurm-client slurmdbd munge mariadb-server)

CTLD_PORT=$PORT_BASE
DBD_PORT=$((PORT_BASE + 1))
DB_PORT=$((PORT_BASE + 2))
SLURMD_PORT1=$((PORT_BASE + 3))
SLURMD_PORT2=$((PORT_BASE + 4))

ETC=$STATE/etc
LOG=$STATE/log
RUN=$STATE/run
BIN=$STATE/bin
MUNGE_DIR=$STATE/munge
DB_DIR=$STATE/mariadb
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
DB_SOCKET=$RUN/mariadb.sock
SLURM_CONF_FILE=$ETC/slurm.conf
DB_USER=slurm
DB_NAME=slurm_acct_db

die() { echo "slurm-local: $*" >&2; exit 1; }
cannot() { echo "slurm-local: cannot here: $*" >&2; exit 3; }
say() { echo "slurm-local: $*"; }

# Settings are checked before any work.
positive_int() {  # NAME VALUE
  [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "slurm-local: $1 must be a positive integer, not '$2'" >&2; exit 2; }
}
positive_int FP8BENCH_SLURM_PORT_BASE "$PORT_BASE"
positive_int FP8BENCH_SLURM_TIMEOUT "$TIMEOUT"
[[ -z ${FP8BENCH_SLURM_CPUS:-} ]] || positive_int FP8BENCH_SLURM_CPUS "$FP8BENCH_SLURM_CPUS"
[[ -z ${FP8BENCH_SLURM_MEM_MB:-} ]] || positive_int FP8BENCH_SLURM_MEM_MB "$FP8BENCH_SLURM_MEM_MB"
((PORT_BASE >= 1024 && PORT_BASE + 4 <= 65535)) ||
  { echo "slurm-local: FP8BENCH_SLURM_PORT_BASE must lie in 1024..65531, not $PORT_BASE" >&2; exit 2; }
[[ $STATE == /* ]] ||
  { echo "slurm-local: FP8BENCH_SLURM_DIR must be an absolute path, not '$STATE'" >&2; exit 2; }

# The daemons, in start order: name, the binary its /proc/PID/comm shows, and its log (for errors).
DAEMONS=(munged mariadb slurmdbd slurmctld slurmd-n1 slurmd-n2)
comm_of() {
  case $1 in
    munged) echo munged ;; mariadb) echo mariadbd ;; slurmdbd) echo slurmdbd ;;
    slurmctld) echo slurmctld ;; slurmd-*) echo slurmd ;;
  esac
}
log_of() {
  case $1 in
    munged) echo "$MUNGE_DIR/munged.log" ;; mariadb) echo "$LOG/mariadb.log" ;;
    *) echo "$LOG/$1.log" ;;
  esac
}
# The PID file each daemon writes itself (a copy goes to $RUN/pids/NAME once it is up).
pidfile_of() {
  case $1 in
    munged) echo "$MUNGE_DIR/munged.pid" ;; mariadb) echo "$RUN/mariadb.pid" ;;
    *) echo "$RUN/$1.pid" ;;
  esac
}

# PID of a recorded daemon if it is still that daemon (a recycled PID is not ours), else nothing.
live_pid() {
  local f=$RUN/pids/$1 pid
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] || return 1
  [[ $(<"/proc/$pid/comm") == "$(comm_of "$1")" ]] || return 1
  echo "$pid"
}

# Poll CMD every 0.2 s until it succeeds or $TIMEOUT s pass; on timeout fail naming the daemon's log.
wait_for() {
  local name=$1 what=$2; shift 2
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if [[ -s $RUN/pids/$name ]] && ! live_pid "$name" >/dev/null; then
      echo "slurm-local: $name exited before it could $what; its log: $(log_of "$name")" >&2
      tail -n 15 "$(log_of "$name")" 2>/dev/null | sed 's/^/  | /' >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "slurm-local: $name did not $what within ${TIMEOUT}s; its log: $(log_of "$name")" >&2
      tail -n 15 "$(log_of "$name")" 2>/dev/null | sed 's/^/  | /' >&2
      exit 1
    fi
    sleep 0.2
  done
}

# Copy the PID the daemon wrote into $RUN/pids/NAME, waiting for the file to appear.
record_pid() {
  local name=$1 f
  f=$(pidfile_of "$name")
  wait_for "$name" "write its PID file $f" test -s "$f"
  mkdir -p "$RUN/pids"
  tr -d ' \n' <"$f" >"$RUN/pids/$name"
  live_pid "$name" >/dev/null || die "$name exited right after starting; its log: $(log_of "$name")"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

CLIENTS=(sacct sacctmgr salloc sattach sbatch sbcast scancel scontrol sdiag sinfo sprio squeue sreport srun sshare
  sstat strigger)

client_env() {
  export SLURM_CONF=$SLURM_CONF_FILE
}

# Client commands that find this cluster without SLURM_CONF. Snakemake's job-step executor drops every SLURM_*
# variable (SLURM_CONF too) before its `srun` inside a job, and srun then looks for /etc/slurm/slurm.conf or
# DNS SRV records ("Could not establish a configuration source"). With $BIN first in PATH, which sbatch hands
# on to the job, every srun in the job is one of these.
write_client_wrappers() {
  local c real
  mkdir -p "$BIN"
  for c in "${CLIENTS[@]}"; do
    real=$(PATH=/usr/local/bin:/usr/bin:/bin command -v "$c") || continue
    printf '#!/bin/sh\n# slurm-local.sh: %s against the local test cluster\nSLURM_CONF=%s exec %s "$@"\n' \
      "$c" "$SLURM_CONF_FILE" "$real" >"$BIN/$c"
    chmod 755 "$BIN/$c"
  done
}

# ---------------------------------------------------------------------------------------------------- install
cmd_install() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then say "already installed: ${PACKAGES[*]}"; return 0; fi
  [[ $(id -u) == 0 ]] || cannot "installing ${missing[*]} needs root"
  command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]}"
  say "installing ${missing[*]}"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}")
  # A fresh image may have no package lists yet: update once and try again.
  if ! "${apt[@]}" >"/tmp/slurm-local-apt.log" 2>&1; then
    apt-get update -qq >>"/tmp/slurm-local-apt.log" 2>&1
    "${apt[@]}" >>"/tmp/slurm-local-apt.log" 2>&1 ||
      cannot "apt-get install ${missing[*]} failed (see /tmp/slurm-local-apt.log)"
  fi
  say "installed ${missing[*]}"
}

require_installed() {
  [[ $(id -u) == 0 ]] || cannot "the local cluster runs its daemons as root"
  local b
  for b in munged mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sinfo sacctmgr; do
    command -v "$b" >/dev/null || [[ -x /usr/sbin/$b ]] ||
      cannot "$b not found; run: $0 install"
  done
  export PATH=$PATH:/usr/sbin:/sbin
}

# ----------------------------------------------------------------------------------------------------- config
write_config() {
  local cpus mem_mb total_kb
  cpus=${FP8BENCH_SLURM_CPUS:-$(nproc)}
  total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
  # Both fake nodes share the machine's memory: half each, less 5 % for the daemons themselves.
  mem_mb=${FP8BENCH_SLURM_MEM_MB:-$((total_kb * 95 / 100 / 1024 / 2))}
  mkdir -p "$ETC" "$LOG" "$RUN/pids" "$STATE/ctld" "$STATE/spool/n1" "$STATE/spool/n2"

  cat >"$SLURM_CONF_FILE" <<EOF
# Written by pipelines/cluster/slurm-local.sh: the local SLURM test fixture, not a production config.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT1
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# This cluster's own munged. SLURM reads the socket for signing from AccountingStoragePass in every client
# and daemon but slurmdbd (which reads AuthInfo), and for checking from AuthInfo: both are needed.
AuthInfo=socket=$MUNGE_SOCKET
AccountingStoragePass=socket=$MUNGE_SOCKET

StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups (none to be had without systemd): processes are tracked through /proc, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true

SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem_mb / cpus))
# The nodes are what this file says, whatever slurmd detects (two fake nodes share one machine).
SlurmdParameters=config_overrides
ReturnToService=2
# Finished jobs stay visible to squeue for 5 minutes (a status check by squeue must still find them).
MinJobAge=300
InactiveLimit=0
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60

AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
# sacct shows each job's --comment (Snakemake's SLURM executor writes the rule and wildcards there).
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none

GresTypes=gpu
NodeName=n[1-2] NodeHostname=localhost NodeAddr=127.0.0.1 Port=$SLURMD_PORT1-$SLURMD_PORT2 CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
# The partition that pipelines/profiles/slurm names for training runs, over the same two nodes.
PartitionName=gpu Nodes=n[1-2] MaxTime=INFINITE State=UP
EOF

  # One fake GPU per node. A File= is needed: a count-only line leaves the nodes drained
  # ("gres/gpu count reported lower than configured").
  cat >"$ETC/gres.conf" <<EOF
NodeName=n[1-2] Name=gpu File=/dev/null
EOF

  # The database password only has to keep other local users out of this throw-away database.
  [[ -s $ETC/db.pass ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$ETC/db.pass")
  (umask 077 && cat >"$ETC/slurmdbd.conf" <<EOF
# Written by pipelines/cluster/slurm-local.sh (mode 600: it holds the database password).
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$(<"$ETC/db.pass")
StorageLoc=$DB_NAME
EOF
  )
  chmod 600 "$ETC/slurmdbd.conf"
}

# ------------------------------------------------------------------------------------------------------ start
munge_ok() { munge -S "$MUNGE_SOCKET" -n </dev/null | unmunge -S "$MUNGE_SOCKET"; }
db() { mariadb --no-defaults --socket="$DB_SOCKET" -uroot "$@"; }
nodes_idle() {
  local s
  s=$(sinfo -h -N -p "$PARTITION" -o '%N %t' 2>/dev/null) || return 1
  [[ $(grep -cE '^n[12] idle$' <<<"$s") == 2 ]]
}
healthy() {
  local d
  for d in "${DAEMONS[@]}"; do live_pid "$d" >/dev/null || return 1; done
  client_env
  local s
  s=$(sinfo -h -N -p "$PARTITION" -o '%N %t' 2>/dev/null) || return 1
  # Busy nodes are healthy too; down, drained or not responding ones are not.
  [[ $(grep -cE '^n[12] (idle|mix|alloc|comp)$' <<<"$s") == 2 ]]
}

start_munged() {
  local key=$MUNGE_DIR/munge.key
  install -d -o munge -g munge -m 755 "$MUNGE_DIR"  # clients need x on the socket's folder
  if [[ ! -s $key ]]; then
    # A key of its own, so this cluster neither needs nor disturbs the machine's /etc/munge/munge.key.
    (umask 077 && head -c 1024 /dev/urandom >"$key")
  fi
  # Every start: a reinstall of munge may have given its user another uid.
  chown -R munge:munge "$MUNGE_DIR"
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$(pidfile_of munged)"
  runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$key" \
    --pid-file="$(pidfile_of munged)" --log-file="$(log_of munged)" --seed-file="$MUNGE_DIR/munged.seed" ||
    die "munged failed to start; its log: $(log_of munged)"
  record_pid munged
  wait_for munged "answer on $MUNGE_SOCKET" munge_ok
}

start_mariadb() {
  if [[ ! -d $DB_DIR/mysql ]]; then
    rm -rf "$DB_DIR"
    mkdir -p "$DB_DIR"
    mariadb-install-db --no-defaults --datadir="$DB_DIR" --user=root --auth-root-authentication-method=socket \
      --skip-test-db >"$LOG/mariadb-install.log" 2>&1 ||
      die "mariadb-install-db failed; its log: $LOG/mariadb-install.log"
  fi
  rm -f "$DB_SOCKET" "$(pidfile_of mariadb)"
  # mariadbd does not fork: setsid -f detaches it from this shell. The InnoDB settings are the least slurmdbd
  # accepts without an error in its log (half its recommendation); the pool is only touched as the tiny
  # database grows.
  setsid -f mariadbd --no-defaults --user=root --datadir="$DB_DIR" --socket="$DB_SOCKET" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$(pidfile_of mariadb)" \
    --log-error="$(log_of mariadb)" --innodb-buffer-pool-size=512M --innodb-log-file-size=64M \
    --innodb-lock-wait-timeout=900 --skip-name-resolve --performance-schema=OFF \
    </dev/null >>"$(log_of mariadb)" 2>&1
  record_pid mariadb
  wait_for mariadb "accept connections on $DB_SOCKET" db -e 'SELECT 1'
  # A clean accounting database each start: job IDs restart at 1 with slurmctld -c, and old records of the
  # same IDs must not answer sacct.
  db -e "DROP DATABASE IF EXISTS $DB_NAME; CREATE DATABASE $DB_NAME;
    CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$(<"$ETC/db.pass")';
    ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$(<"$ETC/db.pass")';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';" >>"$LOG/mariadb-install.log" 2>&1 ||
    die "could not create the accounting database; see $LOG/mariadb-install.log"
}

start_slurmdbd() {
  rm -f "$(pidfile_of slurmdbd)"
  slurmdbd >>"$(log_of slurmdbd)" 2>&1 || die "slurmdbd failed to start; its log: $(log_of slurmdbd)"
  record_pid slurmdbd
  wait_for slurmdbd "answer sacctmgr" sacctmgr -n list cluster
  if ! sacctmgr -i add cluster "$CLUSTER" >/dev/null ||
    ! sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="local test fixture" \
      Organization=fp8bench >/dev/null; then
    die "sacctmgr could not add the cluster and account; slurmdbd's log: $(log_of slurmdbd)"
  fi
  local users=(root) u
  [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]] && users+=("$SUDO_USER")
  for u in "${users[@]}"; do
    sacctmgr -i add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER" >/dev/null ||
      die "sacctmgr could not add user $u; slurmdbd's log: $(log_of slurmdbd)"
  done
}

start_slurmctld() {
  rm -rf "${STATE:?}/ctld" && mkdir -p "$STATE/ctld"
  rm -f "$(pidfile_of slurmctld)"
  # -c: a clean state (no jobs, no nodes drained by an earlier run or config).
  slurmctld -c -f "$SLURM_CONF_FILE" >>"$(log_of slurmctld)" 2>&1 ||
    die "slurmctld failed to start; its log: $(log_of slurmctld)"
  record_pid slurmctld
  wait_for slurmctld "answer scontrol ping" bash -c 'scontrol ping | grep -q "is UP"'
}

start_slurmd() {
  local node=$1
  rm -rf "${STATE:?}/spool/$node" && mkdir -p "$STATE/spool/$node"
  rm -f "$(pidfile_of "slurmd-$node")"
  slurmd -N "$node" -f "$SLURM_CONF_FILE" >>"$(log_of "slurmd-$node")" 2>&1 ||
    die "slurmd -N $node failed to start; its log: $(log_of "slurmd-$node")"
  record_pid "slurmd-$node"
}

cmd_start() {
  require_installed
  if healthy; then say "already running and healthy (SLURM_CONF=$SLURM_CONF_FILE)"; return 0; fi
  local d any=0
  for d in "${DAEMONS[@]}"; do live_pid "$d" >/dev/null && any=1; done
  if ((any)); then say "partly running or unhealthy: stopping it and starting afresh"; cmd_stop; fi
  local p
  for p in "$CTLD_PORT" "$DBD_PORT" "$DB_PORT" "$SLURMD_PORT1" "$SLURMD_PORT2"; do
    port_free "$p" || die "port $p on 127.0.0.1 is in use; choose others with FP8BENCH_SLURM_PORT_BASE"
  done
  local t0=$SECONDS
  mkdir -p "$STATE" && chmod 755 "$STATE"
  # Logs of an earlier start would hide this one's errors.
  rm -rf "$LOG" "$RUN"
  write_config
  write_client_wrappers
  client_env
  # A start that fails half-way stops what it started (the logs stay for reading).
  trap 'echo "slurm-local: start failed; stopping the daemons it started" >&2; cmd_stop >/dev/null 2>&1' EXIT
  start_munged
  start_mariadb
  start_slurmdbd
  start_slurmctld
  start_slurmd n1
  start_slurmd n2
  wait_for slurmd-n2 "leave n1 and n2 idle (sinfo)" nodes_idle
  trap - EXIT
  say "up in $((SECONDS - t0)) s: n1,n2 idle in partitions '$PARTITION' (default) and 'gpu', account '$ACCOUNT'"
  say "clients need: eval \"\$($0 env)\""
}

# ------------------------------------------------------------------------------------------------------- stop
# slurmstepd processes of this fixture and their descendants: they outlive slurmd when it is killed. Ours are
# those that hold one of our slurmd logs open (their environment is overwritten by their process title).
fixture_steps() {
  local p f steps=()
  for p in /proc/[0-9]*; do
    [[ $(cat "$p/comm" 2>/dev/null) == slurmstepd ]] || continue
    for f in "$p"/fd/*; do
      if [[ $(readlink "$f" 2>/dev/null) == "$LOG/slurmd-"* ]]; then steps+=("${p#/proc/}"); break; fi
    done
  done
  ((${#steps[@]})) || return 0
  # The whole process tree below each step.
  local all=("${steps[@]}") frontier=("${steps[@]}") next
  while ((${#frontier[@]})); do
    next=()
    for p in "${frontier[@]}"; do
      # shellcheck disable=SC2207
      next+=($(pgrep -P "$p" 2>/dev/null))
    done
    all+=("${next[@]}")
    frontier=("${next[@]}")
  done
  echo "${all[@]}"
}

kill_and_wait() {  # GRACE PIDs...: TERM, then KILL whatever is left after GRACE seconds
  local grace=$1; shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null
  local deadline=$((SECONDS + grace)) p alive
  while :; do
    alive=()
    for p in "$@"; do  # a zombie has ended; its parent (init here) reaps it
      [[ -d /proc/$p && $(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null) != Z ]] && alive+=("$p")
    done
    ((${#alive[@]})) || return 0
    if ((SECONDS >= deadline)); then kill -KILL "${alive[@]}" 2>/dev/null; sleep 0.5; return 0; fi
    sleep 0.1
  done
}

cmd_stop() {
  export PATH=$PATH:/usr/sbin:/sbin
  client_env
  local t0=$SECONDS jobs
  # Jobs first, while the daemons that end them are still there.
  if live_pid slurmctld >/dev/null && jobs=$(squeue -h -o %A 2>/dev/null) && [[ -n $jobs ]]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    local deadline=$((SECONDS + 10))
    while [[ -n $(squeue -h -o %A 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 0.2; done
  fi
  # Then the daemons, those that depend on others first; the members of a group stop together.
  local group d pid stopped=() pids
  for group in "slurmd-n1 slurmd-n2 slurmctld" "slurmdbd" "mariadb munged"; do
    pids=()
    for d in $group; do
      if pid=$(live_pid "$d"); then pids+=("$pid"); stopped+=("$d"); fi
    done
    kill_and_wait "$TIMEOUT" "${pids[@]}"
    for d in $group; do rm -f "$RUN/pids/$d"; done
  done
  # Job steps left behind (slurmd killed before its jobs ended) ignore TERM: a short grace, then KILL.
  # shellcheck disable=SC2046
  kill_and_wait 2 $(fixture_steps)
  if ((${#stopped[@]})); then say "stopped ${stopped[*]} in $((SECONDS - t0)) s"; else say "not running"; fi
}

# ----------------------------------------------------------------------------------------------------- status
cmd_status() {
  export PATH=$PATH:/usr/sbin:/sbin
  client_env
  local d pid ok=0
  for d in "${DAEMONS[@]}"; do
    if pid=$(live_pid "$d"); then printf '%-10s alive (pid %s)\n' "$d" "$pid"
    else printf '%-10s not running\n' "$d"; ok=1; fi
  done
  if live_pid slurmctld >/dev/null; then sinfo -N -l 2>&1 || ok=1; fi
  if ((ok == 0)) && healthy; then say "healthy"; return 0; fi
  say "not healthy"
  return 1
}

cmd_env() {
  echo "export SLURM_CONF=$SLURM_CONF_FILE"
  # shellcheck disable=SC2016
  echo "export PATH=$BIN:\$PATH"
  echo "export FP8BENCH_SLURM_PARTITION=$PARTITION"
  echo "export FP8BENCH_SLURM_ACCOUNT=$ACCOUNT"
}

case ${1:-} in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
