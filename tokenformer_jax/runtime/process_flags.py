"""The flags by which a process joins a multi-process run, defined once for every entry point that starts
the runtime (main.py, lm_eval.py): the same names, defaults and checks in both, and one call that joins.

Imported only by entry points (a library module that defined flags would define them in every importer).
"""
from absl import flags

COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the runtime.')
PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
TIMEOUT = flags.DEFINE_integer('distributed_timeout_s', 300, 'Start-up: how long to wait for peers.')
HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout_s', 60, 'How long a process that stopped answering is waited for before the others '
    'end with an error naming it (distributed.py).')
HOLDERS = (COORDINATOR, NUM_PROCESSES, PROCESS_ID, TIMEOUT, HEARTBEAT)


def join(on_peer_lost=None) -> bool:
  """distributed.initialize from these flags (automatic on TPU pods and under SLURM); whether it joined."""
  from tokenformer_jax.runtime import distributed  # pylint: disable=import-outside-toplevel
  return distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value, TIMEOUT.value,
                                HEARTBEAT.value, on_peer_lost=on_peer_lost)


def shared(holders) -> dict:
  """The values of `holders` and of these flags that every process of a run must share: all but
  --process_id (and --config and --workdir, which are compared as the resolved config and path)."""
  every = list(holders) + list(HOLDERS)
  return {h.name: h.value for h in every if h.name not in ('process_id', 'config', 'workdir')}
