"""The multi-process runtime: `jax.distributed.initialize` from flags or the environment.

- explicit: --coordinator_address=host:port --num_processes=N --process_id=i (any cluster, or N
  processes on one machine, as launch/local_multiprocess.sh does);
- automatic: on a TPU pod slice, or in a SLURM job step (srun) of more than one task, JAX finds the
  coordinator, the process count and this process's id itself;
- otherwise a single process and nothing to do.

`timeout_s` bounds the wait for peers at start-up (slow hosts may take minutes to boot); `heartbeat_s`
how long a process that stopped answering is waited for: then every other process ends with one line
naming it and status peers.EXIT_PEER_LOST (peers.py), instead of hanging or aborting from C++. Every
process of a run calls `leave` when it ends (main.py does), so that the others do not take it for dead.
On CPU the collectives between processes go over gloo.

`agree` then makes sure every process was started with the same settings: a process with another seed
would train divergent "replicated" parameters, and one with another batch size would hang a collective.
"""
import atexit
import json
import os

import jax
import numpy as np
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from tokenformer_jax.errors import UserError
from tokenformer_jax.runtime import peers

_watch: peers.PeerWatch | None = None


def _cluster_detected() -> bool:
  # Under SLURM, the tasks of this job step (srun sets SLURM_STEP_NUM_TASKS), not of the allocation:
  # a plain `python -m ...` inside `salloc --ntasks=8` is one process and starts alone.
  slurm_tasks = int(os.environ.get('SLURM_STEP_NUM_TASKS', '1') or 1)
  tpu_hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return slurm_tasks > 1 or ',' in tpu_hosts or 'MEGASCALE_COORDINATOR_ADDRESS' in os.environ


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300, heartbeat_s: int = 60,
               on_peer_lost=None) -> bool:
  """Joins the multi-process runtime when asked or detected, and watches the other processes
  (`on_peer_lost(status)` runs before a lost peer ends this one); returns whether it joined."""
  global _watch
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
    raise UserError('--coordinator_address, --num_processes and --process_id go together')
  if coordinator_address is None and not _cluster_detected():
    return False
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise UserError(f'--process_id={process_id} is not in [0, --num_processes={num_processes})')
  if heartbeat_s < 1:
    raise UserError(f'--heartbeat_timeout_s must be at least 1, got {heartbeat_s}')
  jax.config.update('jax_enable_recoverability', True)   # a dead peer is reported, not fatal: peers.py
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id,
      initialization_timeout=timeout_s, heartbeat_timeout_seconds=heartbeat_s)
  logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  _watch = peers.PeerWatch(_coordination_client(), jax.process_index(), jax.process_count(), heartbeat_s,
                           on_peer_lost)
  _watch.start()
  atexit.register(leave, 1)   # for an entry point that does not call leave: ends as if it had failed
  return True


def _coordination_client():
  """The coordination service's client (get_live_nodes, its key-value store, shutdown), for peers.py.
  jax.distributed has no public accessor for it (initialize, is_initialized and shutdown only);
  Orbax's public multihost API hands it out, so its version pairing with JAX keeps this working."""
  from orbax.checkpoint import multihost  # pylint: disable=import-outside-toplevel
  return multihost.get_jax_distributed_client()


def check_peers() -> None:
  """After an unexpected error: if a peer is gone, this process ends here (one line, EXIT_PEER_LOST);
  otherwise returns, and the caller re-raises."""
  if _watch is not None:
    _watch.verdict()


def leave(exit_status: int) -> None:
  """This process is about to end with `exit_status`: the others are told, and process 0 (the
  coordination service's host) waits for them to disconnect first."""
  global _watch
  if _watch is not None:
    watch, _watch = _watch, None
    watch.leave(exit_status)
    jax.distributed.shutdown()


def _gather_texts(text: str) -> list[str]:
  """Every process's `text`, in process order (two all-gathers: the lengths, then the padded bytes)."""
  local = np.frombuffer(text.encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.array([local.size], np.int32))).ravel()
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:local.size] = local
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
  return [bytes(row[:n]).decode() for row, n in zip(rows, lengths)]


def agree(settings: dict) -> None:
  """Compares every process's settings (the resolved config and flags) with process 0's; a difference
  is a UserError naming the keys, raised on every process alike (all of them see all settings)."""
  if jax.process_count() < 2:
    return
  texts = _gather_texts(json.dumps(settings, sort_keys=True, default=repr))
  first = traverse_util.flatten_dict(json.loads(texts[0]), sep='.')
  problems = []
  for index, text in enumerate(texts[1:], start=1):
    other = traverse_util.flatten_dict(json.loads(text), sep='.')
    keys = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
    problems += [f'{k}: {first.get(k)!r} on process 0, {other.get(k)!r} on process {index}' for k in keys]
  if problems:
    shown = '; '.join(problems[:6]) + (f'; and {len(problems) - 6} more' if len(problems) > 6 else '')
    raise UserError(f'the processes of this run were started with different settings: {shown}')
