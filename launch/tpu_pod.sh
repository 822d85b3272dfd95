#!/usr/bin/env bash
# Run an experiment on every worker of a Cloud TPU VM slice (a pod slice is several hosts).
#
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=P] [--create --accelerator_type=v5p-8 \
#       --runtime=v2-alpha-tpuv5] [--retries=N] [--dry_run] -- --config=experiments/pile.py:150m \
#       --workdir=/mnt/shared/run1 [--config.x=y ...]
#
# The workdir must be a filesystem all workers share (NFS, Filestore or a gcsfuse mount).
# Steps: (optional) create the TPU VM; pack this checkout's files (tracked and untracked, not
# ignored) into one archive and copy it to every worker, where it replaces ~/tokenformer_jax, so the
# workers run exactly this code; install it there with jax[tpu]; start main.py on all workers,
# detached (setsid nohup: a dropped terminal does not stop it), each logging to
# ~/tokenformer_jax_logs/<host>.log, through launch/tpu_worker.sh, which relaunches a preempted run
# (exit 143) up to --retries times, resuming from its saved step. JAX finds the pod's coordinator
# and process ids itself (see tokenformer_jax/runtime/distributed.py). LIBTPU_INIT_ARGS turns on the async
# collective fusion flags that let XLA overlap FSDP all-gathers / reduce-scatters with compute.
# --dry_run prints the commands instead of running them.
set -euo pipefail

tpu="" zone="" project="" create=0 accelerator_type="" runtime="" dry_run=0 retries=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --create) create=1 ;;
    --accelerator_type=*) accelerator_type="${1#*=}" ;;
    --runtime=*) runtime="${1#*=}" ;;
    --retries=*) retries="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (options come before --, main.py's flags after it)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$tpu" || -z "$zone" ]]; then echo "error: --tpu and --zone are required" >&2; exit 2; fi
if [[ $create == 1 && ( -z "$accelerator_type" || -z "$runtime" ) ]]; then
  echo "error: --create needs --accelerator_type and --runtime" >&2; exit 2
fi
if ! [[ "$retries" =~ ^[0-9]+$ ]]; then echo "error: --retries wants a count, got $retries" >&2; exit 2; fi
if [[ $# == 0 ]]; then echo "error: pass main.py's flags after --" >&2; exit 2; fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
scope=(--zone="$zone")
[[ -n "$project" ]] && scope+=(--project="$project")
libtpu_args="--xla_tpu_enable_async_collective_fusion=true \
--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true \
--xla_tpu_enable_async_collective_fusion_multiple_steps=true \
--xla_tpu_overlap_compute_collective_tc=true --xla_enable_async_all_gather=true \
--xla_enable_async_reduce_scatter=true"
main_args=$(printf '%q ' "$@")
here="$(cd "$(dirname "$0")/.." && pwd)"
archive_dir="$(mktemp -d)"
trap 'rm -rf "$archive_dir"' EXIT
archive="$archive_dir/tokenformer_jax.tgz"

run() {
  if [[ $dry_run == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [[ $create == 1 ]]; then
  run "${gcloud_tpu[@]}" create "$tpu" "${scope[@]}" --accelerator-type="$accelerator_type" \
    --version="$runtime"
fi
if [[ $dry_run == 1 ]]; then
  echo "(cd $(printf '%q' "$here") && git ls-files -z --cached --others --exclude-standard" \
    "| tar --null -czf $(printf '%q' "$archive") -T -)"
else
  (cd "$here" && git ls-files -z --cached --others --exclude-standard | tar --null -czf "$archive" -T -)
fi
run "${gcloud_tpu[@]}" scp "$archive" "$tpu:tokenformer_jax.tgz" "${scope[@]}" --worker=all
run "${gcloud_tpu[@]}" ssh "$tpu" "${scope[@]}" --worker=all \
  --command="rm -rf ~/tokenformer_jax && mkdir -p ~/tokenformer_jax ~/tokenformer_jax_logs && \
tar -xzf ~/tokenformer_jax.tgz -C ~/tokenformer_jax && cd ~/tokenformer_jax && \
python3 -m pip install -q -e '.[tpu]' 'jax[tpu]'"
run "${gcloud_tpu[@]}" ssh "$tpu" "${scope[@]}" --worker=all \
  --command="cd ~/tokenformer_jax && LIBTPU_INIT_ARGS='$libtpu_args' setsid nohup bash \
launch/tpu_worker.sh --retries=$retries -- $main_args > ~/tokenformer_jax_logs/\$(hostname).log 2>&1 < /dev/null &"
echo "started; follow worker 0 with: ${gcloud_tpu[*]} ssh $tpu ${scope[*]} --worker=0" \
  "--command='tail -f ~/tokenformer_jax_logs/*.log'" >&2
