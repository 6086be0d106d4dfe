#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for trying and testing profiles/slurm (docs/gpus_and_clusters.md).
#
#   tools/local_slurm.sh up       # apt-installs slurm-wlm + munge if missing, starts munged, slurmctld, slurmd
#   tools/local_slurm.sh status   # the recorded daemons and `sinfo`
#   tools/local_slurm.sh env      # prints `export SLURM_CONF=...` for this cluster's client commands
#   tools/local_slurm.sh down     # stops exactly the daemons `up` started (PIDs recorded in $STATE/pids)
#
# Everything lives in one state folder ($MEGL_SLURM_DIR, default /tmp/megl-slurm-$USER): slurm.conf,
# gres.conf, a private munge key and socket, spool/state folders, logs, PID files. One thing outside
# it: /etc/slurm/slurm.conf becomes a link to our slurm.conf (only where no slurm.conf exists; `down`
# removes the link). It has to: snakemake-executor-plugin-slurm-jobstep drops SLURM_CONF from the
# environment of the `srun` it starts inside each job, so srun only finds Slurm's default path.
# A munged already running on this machine is left alone (ours uses its own socket). The cluster: no accounting database (sacct fails, as on many small
# clusters), proctrack/linuxproc, no cgroups, one node `localhost` (127.0.0.1) with this machine's
# CPUs and memory and a fake GRES `gpu:2` (links to /dev/null: jobs can ask for GPUs and be
# scheduled, nothing more). slurmctld's job-completion records go to $STATE/jobcomp.txt.
set -euo pipefail

STATE="${MEGL_SLURM_DIR:-/tmp/megl-slurm-${USER:-$(id -un)}}"
CTLD_PORT="${MEGL_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${MEGL_SLURM_SLURMD_PORT:-6818}"
CONF="$STATE/slurm.conf"
PIDS="$STATE/pids"
ETC_CONF=/etc/slurm/slurm.conf

die() { echo "local_slurm: $*" >&2; exit 1; }

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        || missing+=(slurm-wlm)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "need ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' first"
    echo "local_slurm: installing ${missing[*]} (apt)"
    # policy-rc.d (or no init system) keeps apt from starting the packaged services; we start our own.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
}

# PID recorded under NAME, if that process is still the daemon we started (guards against PID reuse).
live_pid() {
    local name=$1 pid
    pid=$(awk -v n="$name" '$1 == n {print $2}' "$PIDS" 2>/dev/null | tail -n1)
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$STATE" || return 1
    echo "$pid"
}

wait_for_pidfile() {  # $1 pid file; echoes the PID once the file holds a live one
    local f=$1 pid
    for _ in $(seq 1 100); do
        pid=$(cat "$f" 2>/dev/null || true)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; return 0; fi
        sleep 0.1
    done
    return 1
}

write_config() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024) - 512}' /proc/meminfo)
    mkdir -p "$STATE"/{munge,state,spool,log}
    chmod 700 "$STATE/munge"
    cat >"$CONF" <<EOF
# Written by tools/local_slurm.sh: a one-node test cluster on localhost. Do not use in production.
ClusterName=megl-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Finished jobs stay visible to squeue for 5 minutes (Slurm's default), what the plugin's squeue status needs.
MinJobAge=300
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    # A fake GRES: two "GPUs" whose device files are links to /dev/null (Slurm wants character
    # devices), so that --gpus=N jobs are scheduled on this CPU-only node. Nothing else is faked.
    mkdir -p "$STATE/dev"
    ln -sfn /dev/null "$STATE/dev/gpu0"
    ln -sfn /dev/null "$STATE/dev/gpu1"
    cat >"$STATE/gres.conf" <<EOF
AutoDetect=off
NodeName=localhost Name=gpu File=$STATE/dev/gpu[0-1]
EOF
    [ -s "$STATE/munge/munge.key" ] || {
        dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$STATE/munge/munge.key"
    }
}

up() {
    install_packages
    if live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null && live_pid munged >/dev/null; then
        echo "local_slurm: already up ($STATE)"; status; return 0
    fi
    down quiet || true
    write_config
    : >"$PIDS"
    export SLURM_CONF="$CONF"
    if [ "$(readlink "$ETC_CONF" 2>/dev/null)" != "$CONF" ]; then
        [ -e "$ETC_CONF" ] && die "$ETC_CONF exists already (a real Slurm set-up?); not touching it"
        mkdir -p "$(dirname "$ETC_CONF")" && ln -s "$CONF" "$ETC_CONF"
    fi

    munged --force --socket="$STATE/munge/munge.socket" --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
    echo "munged $(wait_for_pidfile "$STATE/munge/munged.pid" || die "munged did not start: $STATE/log/munged.log")" >>"$PIDS"

    slurmctld -f "$CONF" -i
    echo "slurmctld $(wait_for_pidfile "$STATE/slurmctld.pid" || die "slurmctld did not start: $STATE/log/slurmctld.log")" >>"$PIDS"
    slurmd -f "$CONF" -N localhost
    echo "slurmd $(wait_for_pidfile "$STATE/slurmd.pid" || die "slurmd did not start: $STATE/log/slurmd.log")" >>"$PIDS"

    for _ in $(seq 1 60); do
        if timeout 5 sinfo -h -N -t idle -o %N 2>/dev/null | grep -qx localhost; then
            echo "local_slurm: up; PIDs in $PIDS"
            echo "  export SLURM_CONF=$CONF"
            return 0
        fi
        sleep 1
    done
    tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    die "node 'localhost' did not become idle within 60 s (logs above); run '$0 down'"
}

down() {
    local quiet=${1:-} name pid stopped=0
    [ -f "$PIDS" ] || { [ -n "$quiet" ] || echo "local_slurm: nothing recorded in $PIDS"; return 0; }
    if pid=$(live_pid slurmctld); then  # cancel what is left, so no job step outlives the cluster
        SLURM_CONF="$CONF" timeout 10 scancel --full --user "$(id -un)" 2>/dev/null || true
    fi
    for name in slurmd slurmctld munged; do  # reverse start order
        pid=$(live_pid "$name") || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        echo "local_slurm: stopped $name ($pid)"
        stopped=$((stopped + 1))
    done
    rm -f "$PIDS"
    [ "$(readlink "$ETC_CONF" 2>/dev/null)" = "$CONF" ] && rm -f "$ETC_CONF"
    [ -n "$quiet" ] || echo "local_slurm: down ($stopped daemons stopped)"
}

status() {
    local name pid rc=0
    for name in munged slurmctld slurmd; do
        if pid=$(live_pid "$name"); then echo "$name: running ($pid)"; else echo "$name: not running"; rc=1; fi
    done
    [ -f "$CONF" ] && SLURM_CONF="$CONF" timeout 5 sinfo 2>&1 || true
    return $rc
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
