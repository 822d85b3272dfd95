"""The multi-process runtime: `jax.distributed.initialize` from flags or the environment.

- explicit: --coordinator_address=host:port --num_processes=N --process_id=i (any cluster, or N
  processes on one machine, as launch/local_multiprocess.sh does);
- automatic: on a TPU pod slice or under SLURM with more than one task, JAX finds the coordinator,
  the process count and this process's id itself;
- otherwise a single process and nothing to do.

`timeout_s` bounds both the wait for peers at start-up and the heartbeat: a process whose peers stop
answering is told by the coordination service and exits with an error, instead of hanging for ever.
On CPU the collectives between processes go over gloo.
"""
import os

import jax
from absl import logging

from tokenformer_jax.errors import UserError


def _cluster_detected() -> bool:
  slurm_tasks = int(os.environ.get('SLURM_NTASKS', os.environ.get('SLURM_NPROCS', '1')) or 1)
  tpu_hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return slurm_tasks > 1 or ',' in tpu_hosts or 'MEGASCALE_COORDINATOR_ADDRESS' in os.environ


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> bool:
  """Joins the multi-process runtime when asked or detected; returns whether it did."""
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
    raise UserError('--coordinator_address, --num_processes and --process_id go together')
  if coordinator_address is None and not _cluster_detected():
    return False
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise UserError(f'--process_id={process_id} is not in [0, --num_processes={num_processes})')
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id,
      initialization_timeout=timeout_s, heartbeat_timeout_seconds=timeout_s)
  logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
