#!/usr/bin/env bash
# N processes on this machine forming one JAX runtime (CPU devices, gloo collectives): what the
# multi-process tests use, and a way to try a multi-host config on a laptop.
#
#   launch/local_multiprocess.sh [--num_processes=2] [--devices_per_process=2] [--port=12355] \
#       [--dry_run] -- --config=experiments/tiny.py --workdir=/tmp/mp [--config.x=y ...]
#
# Every process gets the same arguments plus --coordinator_address/--num_processes/--process_id;
# process i logs to WORKDIR/logs/process_i.log (process 0 also to the terminal). The script exits
# with the status of the first process to end with a non-zero one (in time, to 0.2 s, not in process
# order: the first to fail is usually the cause, and the others end because of it), or 0 when all succeed.
set -euo pipefail

num_processes=2
devices_per_process=2
port=12355
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --num_processes=*) num_processes="${1#*=}" ;;
    --devices_per_process=*) devices_per_process="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (options come before --, main.py's flags after it)" >&2; exit 2 ;;
  esac
  shift
done
args=("$@")
workdir=""
for a in "${args[@]}"; do [[ "$a" == --workdir=* ]] && workdir="${a#--workdir=}"; done
if [[ -z "$workdir" ]]; then echo "error: pass --workdir=DIR after --" >&2; exit 2; fi
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ && "$devices_per_process" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --num_processes and --devices_per_process must be positive integers" >&2; exit 2
fi

python_bin="${PYTHON:-python}"
quoted_args=$(printf '%q ' "${args[@]}")
commands=()
for ((i = 0; i < num_processes; i++)); do
  commands+=("XLA_FLAGS=--xla_force_host_platform_device_count=${devices_per_process} JAX_PLATFORMS=cpu \
${python_bin} -m tokenformer_jax.main ${quoted_args}--coordinator_address=localhost:${port} \
--num_processes=${num_processes} --process_id=${i}")
done
if [[ "$dry_run" == 1 ]]; then
  printf '%s\n' "${commands[@]}"
  exit 0
fi

mkdir -p "$workdir/logs"
pids=()
for ((i = 0; i < num_processes; i++)); do
  log="$workdir/logs/process_${i}.log"
  if [[ $i == 0 ]]; then
    bash -c "set -o pipefail; ${commands[$i]} 2>&1 | tee $(printf '%q' "$log")" &
  else
    bash -c "${commands[$i]}" > "$log" 2>&1 &
  fi
  pids+=($!)
done
# Polls for the processes that ended (bash reaps them as they end; `wait PID` then gives the status):
# portable, unlike `wait -n`, which can miss a job that ended while bash was reporting another.
status=0
running=("${pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then still+=("$pid"); continue; fi
    code=0
    wait "$pid" || code=$?
    [[ $status == 0 ]] && status=$code
  done
  running=("${still[@]+"${still[@]}"}")
  [[ ${#running[@]} -gt 0 ]] && sleep 0.2
done
exit "$status"
