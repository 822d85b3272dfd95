"""distributed.py: when start-up is automatic, and the flags that go together (the two-process runs
themselves are in multiprocess_test.py)."""
import pytest

from tokenformer_jax.errors import UserError
from tokenformer_jax.runtime import distributed

CLUSTER_VARS = ('SLURM_NTASKS', 'SLURM_STEP_NUM_TASKS', 'TPU_WORKER_HOSTNAMES',
                'MEGASCALE_COORDINATOR_ADDRESS')


@pytest.mark.parametrize('env,detected', [
    ({}, False),
    ({'SLURM_NTASKS': '8'}, False),                              # python inside `salloc --ntasks=8`
    ({'SLURM_NTASKS': '8', 'SLURM_STEP_NUM_TASKS': '1'}, False),  # the batch script's own step
    ({'SLURM_NTASKS': '8', 'SLURM_STEP_NUM_TASKS': '8'}, True),   # under srun
    ({'TPU_WORKER_HOSTNAMES': 'a'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'a,b'}, True),
])
def test_automatic_start_up_only_for_several_tasks(monkeypatch, env, detected):
  for name in CLUSTER_VARS:
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert distributed._cluster_detected() == detected


def test_explicit_flags_go_together():
  with pytest.raises(UserError, match='go together'):
    distributed.initialize('localhost:1234', None, 0)



def test_heartbeat_timeout_must_be_positive():
  with pytest.raises(UserError, match='--heartbeat_timeout_s must be at least 1'):
    distributed.initialize('localhost:1234', 2, 0, heartbeat_s=0)
