#!/usr/bin/env bash
# N processes on this machine, M simulated CPU devices each, joined through
# jax.distributed on localhost: the multi-host code path without a cluster.
#
#   launch/multiprocess_cpu.sh --num_processes=2 --devices_per_process=4 -- \
#     --config=configs/moving_digits.py:stage=video,runlocal --workdir=/tmp/videoldm/video
#
# Launcher options (before `--`, all optional):
#   --num_processes=N          processes (default 2)
#   --devices_per_process=M    CPU devices per process (default 4)
#   --port=P                   coordinator port on localhost (default 12355)
#   --dry-run                  print the commands and their environment, run nothing
# Everything after `--` goes to `python -m videoldm.main` unchanged, plus
# --config.multiprocess=True. Output lines are prefixed with `[process i]`
# and each process's log is also kept in <workdir>/logs/process_<i>.log.
# Exits with the first non-zero exit status of the processes (0 when all pass).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

num_processes=2
devices_per_process=4
port=12355
dry_run=0
while (( $# )); do
  case "$1" in
    --num_processes=*) num_processes="${1#*=}" ;;
    --devices_per_process=*) devices_per_process="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    --) shift; break ;;
    *) unknown_option "$1" "expected --num_processes=, --devices_per_process=, --port=, --dry-run or -- followed by videoldm.main flags." ;;
  esac
  shift
done
require_positive_integers "$num_processes" "$devices_per_process" "$port"
require_workdir "$@"
log_dir="$workdir/logs"

set_main_args multi "$@"
command=("$PYTHON" "${main_args[@]}")
xla_flags="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices_per_process"
environment() {  # Sets env_vars to the environment of process $1.
  env_vars=(JAX_PLATFORMS=cpu "XLA_FLAGS=$xla_flags" "JAX_COORDINATOR_ADDRESS=localhost:$port"
            "JAX_NUM_PROCESSES=$num_processes" "JAX_PROCESS_ID=$1")
}

if (( dry_run )); then
  for (( i = 0; i < num_processes; i++ )); do
    environment "$i"
    echo "$(printf '%q ' "${env_vars[@]}" "${command[@]}")> $log_dir/process_$i.log"
  done
  exit 0
fi

mkdir -p "$log_dir"
set -m  # Each process gets its own process group, so a failure can stop the others.
pids=()
stop_all() {  # SIGTERM (the trainer saves at its next step), SIGKILL after 30 s.
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for (( waited = 0; waited < 30; waited++ )); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    (( alive )) || return 0
    sleep 1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit "$EXIT_STOPPED"' INT TERM  # The processes saved: resumable.
for (( i = 0; i < num_processes; i++ )); do
  environment "$i"
  ( env "${env_vars[@]}" "${command[@]}" 2>&1 \
      | tee "$log_dir/process_$i.log" | sed -u "s/^/[process $i] /"
    exit "${PIPESTATUS[0]}" ) &
  pids+=("$!")
done
status=0
for (( left = num_processes; left > 0; left-- )); do  # In the order they finish.
  code=0
  wait -n -p finished "${pids[@]}" || code=$?
  if (( code != 0 && status == 0 )); then
    echo "$LAUNCHER: a process (pid $finished) exited with status $code; stopping the others." >&2
    status=$code
    stop_all
  fi
done
exit "$status"
