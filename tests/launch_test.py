"""The launchers' --dry_run output: the commands they would run, with the arguments passed through;
the tcmalloc opt-in."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ARGS = ['--config=experiments/tiny.py', '--workdir=/tmp/run one', '--config.train.steps=5']


def dry_run(*command):
  proc = subprocess.run(list(command), cwd=ROOT, capture_output=True, text=True, timeout=60)
  return proc.returncode, proc.stdout, proc.stderr


def test_local_multiprocess():
  code, out, err = dry_run('bash', 'launch/local_multiprocess.sh', '--num_processes=3', '--port=4321',
                           '--dry_run', '--', *ARGS)
  assert code == 0, err
  lines = out.strip().splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert f'--process_id={i}' in line and '--num_processes=3' in line
    assert '--coordinator_address=localhost:4321' in line and '--workdir=/tmp/run\\ one' in line
    assert 'xla_force_host_platform_device_count=2' in line


def test_tpu_pod():
  code, out, err = dry_run('bash', 'launch/tpu_pod.sh', '--tpu=t1', '--zone=us-east5-a', '--create',
                           '--accelerator_type=v5p-8', '--runtime=v2-alpha-tpuv5', '--dry_run', '--',
                           *ARGS)
  assert code == 0, err
  lines = out.strip().splitlines()
  assert lines[0].startswith('gcloud compute tpus tpu-vm create t1')
  assert all('--worker=all' in line for line in lines[1:])
  assert 'LIBTPU_INIT_ARGS' in lines[-1] and 'tokenformer_jax.main' in lines[-1]


def test_slurm():
  code, out, err = dry_run('bash', 'launch/slurm_gpu.sbatch', '--dry_run', '--', *ARGS)
  assert code == 0, err
  assert 'xla_gpu_enable_latency_hiding_scheduler=true' in out and 'srun' in out
  assert 'tokenformer_jax.main --config=experiments/tiny.py' in out


def test_bad_launcher_input():
  assert dry_run('bash', 'launch/tpu_pod.sh', '--dry_run', '--', *ARGS)[0] == 2
  assert dry_run('bash', 'launch/local_multiprocess.sh', '--bogus')[0] == 2
  assert dry_run('bash', 'launch/slurm_gpu.sbatch', '--dry_run')[0] == 2


_MAPS = 'import sys; sys.exit(0 if "tcmalloc" in open("/proc/self/maps").read() else 3)'


def _tcmalloc_installed():
  return dry_run('bash', 'launch/with_tcmalloc.sh', 'true')[0] == 0


def test_with_tcmalloc_refuses_a_missing_library():
  env = dict(os.environ, TCMALLOC='/nonexistent/libtcmalloc.so')
  proc = subprocess.run(['bash', 'launch/with_tcmalloc.sh', 'true'], cwd=ROOT, capture_output=True,
                        text=True, timeout=60, env=env)
  assert proc.returncode == 2 and proc.stderr.startswith('error: no tcmalloc library found at /nonexistent')
  assert dry_run('bash', 'launch/with_tcmalloc.sh')[0] == 2


def test_nothing_preloads_an_allocator_by_default():
  assert subprocess.run([sys.executable, '-c', _MAPS], timeout=60).returncode == 3


@pytest.mark.skipif(not _tcmalloc_installed(),
                    reason='tcmalloc is an opt-in the README installs separately (apt install '
                           'libtcmalloc-minimal4)')
def test_with_tcmalloc_preloads_it():
  assert dry_run('bash', 'launch/with_tcmalloc.sh', sys.executable, '-c', _MAPS)[0] == 0
