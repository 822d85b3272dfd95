#!/usr/bin/env bash
# What tpu_pod.sh starts on each TPU VM worker, detached: main.py, relaunched after a preemption.
#
#   bash launch/tpu_worker.sh [--retries=N] -- --config=... --workdir=...
#
# A preempted run (SIGTERM on any worker: all of them save one agreed step and exit 143) is started
# again, resuming from that step, up to N times; any other status ends the loop with that status.
# SIGTERM to this script is passed on to main.py (which saves and exits 143).
set -uo pipefail

retries=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --retries=*) retries="${1#*=}" ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (options come before --, main.py's flags after it)" >&2; exit 2 ;;
  esac
  shift
done
if ! [[ "$retries" =~ ^[0-9]+$ ]]; then echo "error: --retries wants a count, got $retries" >&2; exit 2; fi
if [[ $# == 0 ]]; then echo "error: pass main.py's flags after --" >&2; exit 2; fi

attempt=0
child=''
trap '[[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null' TERM  # passed on: main.py saves and exits
while true; do
  echo "[tpu_worker] $(date -u +%FT%TZ) attempt $attempt: main.py $*" >&2
  "${PYTHON:-python3}" -m tokenformer_jax.main "$@" &
  child=$!
  while true; do  # `wait` returns early when the trap runs: wait again until main.py has exited
    wait "$child"; status=$?
    kill -0 "$child" 2>/dev/null || break
  done
  if [[ $status != 143 || $attempt -ge $retries ]]; then exit "$status"; fi
  attempt=$((attempt + 1))
  echo "[tpu_worker] preempted (status 143): relaunch $attempt of $retries, resuming" >&2
done
