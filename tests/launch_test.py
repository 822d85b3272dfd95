"""The launchers' --dry_run output: the commands they would run, with the arguments passed through;
the tcmalloc opt-in."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT

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



def _fake_processes(tmp_path, outcomes):
  """A stand-in python for local_multiprocess.sh: process i sleeps outcomes[i][0] seconds, then exits
  with outcomes[i][1] (a negative one: killed by that signal)."""
  for index, (delay, status) in enumerate(outcomes):
    end = f'kill -{-status} $$' if status < 0 else f'exit {status}'
    (tmp_path / f'process_{index}').write_text(f'sleep {delay}\n{end}\n')
  script = tmp_path / 'python'
  script.write_text('#!/usr/bin/env bash\nfor a in "$@"; do [[ "$a" == --process_id=* ]] && i="${a#*=}"; done\n'
                    'source "$(dirname "$0")/process_$i"\n')
  script.chmod(0o755)
  return dict(os.environ, PYTHON=str(script))


@pytest.mark.parametrize('outcomes,status', [
    ([(0, 143), (2, 1)], 143),   # the first to fail is process 0, preempted
    ([(2, 143), (0, 1)], 1),     # process 1 fails first: its status, not process 0's
    ([(0, 0), (0, -9)], 137),    # killed: 128 + 9, as the shell reports it
    ([(0, 0), (1, 0)], 0),
])
def test_local_multiprocess_exits_with_the_first_failure(tmp_path, outcomes, status):
  proc = subprocess.run(['bash', 'launch/local_multiprocess.sh', '--num_processes=2', '--',
                         '--config=experiments/tiny.py', f'--workdir={tmp_path / "w"}'], cwd=ROOT,
                        capture_output=True, text=True, timeout=60, env=_fake_processes(tmp_path, outcomes))
  assert proc.returncode == status, proc.stderr

def test_tpu_pod():
  code, out, err = dry_run('bash', 'launch/tpu_pod.sh', '--tpu=t1', '--zone=us-east5-a', '--create',
                           '--accelerator_type=v5p-8', '--runtime=v2-alpha-tpuv5', '--retries=3',
                           '--dry_run', '--', *ARGS)
  assert code == 0, err
  create, pack, copy, install, start = out.strip().splitlines()
  assert create.startswith('gcloud compute tpus tpu-vm create t1')
  assert 'git ls-files' in pack and 'tar' in pack
  # one archive file, unpacked into a fresh folder: a second launch cannot nest or keep old code
  assert ' scp ' in copy and '--recurse' not in copy and copy.count('tokenformer_jax.tgz') == 2
  assert 'rm\\ -rf\\ ~/tokenformer_jax\\ ' in install and 'tar\\ -xzf' in install
  assert all('--worker=all' in line for line in (copy, install, start))
  assert 'LIBTPU_INIT_ARGS' in start and 'setsid\\ nohup' in start
  assert 'launch/tpu_worker.sh\\ --retries=3' in start and '~/tokenformer_jax_logs/' in start


def _fake_main(tmp_path, statuses):
  """A stand-in python: `-m tokenformer_jax.main ...` exits with the next of `statuses`."""
  script = tmp_path / 'python'
  (tmp_path / 'statuses').write_text(' '.join(map(str, statuses)))
  script.write_text('#!/usr/bin/env bash\nset -- $(cat "$(dirname "$0")/statuses")\n'
                    'echo "${@:2}" > "$(dirname "$0")/statuses"\necho run >> "$(dirname "$0")/calls"\n'
                    'exit "$1"\n')
  script.chmod(0o755)
  return dict(os.environ, PYTHON=str(script))


@pytest.mark.parametrize('statuses,retries,calls,final', [
    ([143, 143, 0], 3, 3, 0),     # preempted twice, then finishes
    ([143, 143, 143], 2, 3, 143),  # out of retries: the preempted status
    ([2, 0], 3, 1, 2),            # a failure is not retried
])
def test_tpu_worker_relaunches_a_preempted_run(tmp_path, statuses, retries, calls, final):
  env = _fake_main(tmp_path, statuses)
  proc = subprocess.run(['bash', 'launch/tpu_worker.sh', f'--retries={retries}', '--', *ARGS], cwd=ROOT,
                        capture_output=True, text=True, timeout=60, env=env)
  assert proc.returncode == final, proc.stderr
  assert (tmp_path / 'calls').read_text().count('run') == calls
  assert proc.stderr.count('preempted (status 143): relaunch') == min(statuses.count(143), retries)


def test_slurm_requeues_a_preempted_job(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text('#!/usr/bin/env bash\nexit 143\n')
  (bin_dir / 'scontrol').write_text('#!/usr/bin/env bash\necho "$*" > "$(dirname "$0")/scontrol.log"\n')
  for tool in ('srun', 'scontrol'):
    (bin_dir / tool).chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_JOB_ID='77')
  proc = subprocess.run(['bash', 'launch/slurm_gpu.sbatch', '--', *ARGS], cwd=ROOT, capture_output=True,
                        text=True, timeout=60, env=env)
  assert proc.returncode == 143 and (bin_dir / 'scontrol.log').read_text().strip() == 'requeue 77'
  script = open(os.path.join(ROOT, 'launch', 'slurm_gpu.sbatch')).read()
  assert '#SBATCH --requeue' in script and '#SBATCH --signal=TERM@120' in script


def test_slurm():
  code, out, err = dry_run('bash', 'launch/slurm_gpu.sbatch', '--dry_run', '--', *ARGS)
  assert code == 0, err
  assert 'xla_gpu_enable_latency_hiding_scheduler=true' in out and 'srun' in out
  assert 'tokenformer_jax.main --config=experiments/tiny.py' in out


def test_bad_launcher_input():
  assert dry_run('bash', 'launch/tpu_pod.sh', '--dry_run', '--', *ARGS)[0] == 2
  assert dry_run('bash', 'launch/local_multiprocess.sh', '--bogus')[0] == 2
  assert dry_run('bash', 'launch/slurm_gpu.sbatch', '--dry_run')[0] == 2
  assert dry_run('bash', 'launch/tpu_pod.sh', '--tpu=t', '--zone=z', '--retries=x', '--', *ARGS)[0] == 2
  assert dry_run('bash', 'launch/tpu_worker.sh', '--retries=1')[0] == 2


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


def test_tpu_worker_passes_sigterm_on_to_main(tmp_path):
  script = tmp_path / 'python'  # saves and exits 143 on SIGTERM, as main.py does; the rerun finishes
  script.write_text('#!/usr/bin/env bash\nif [[ -e "$(dirname "$0")/resumed" ]]; then exit 0; fi\n'
                    'trap \'touch "$(dirname "$0")/resumed"; exit 143\' TERM\n'
                    'touch "$(dirname "$0")/started"\nsleep 60 >/dev/null 2>&1 & wait\n')
  script.chmod(0o755)
  proc = subprocess.Popen(['bash', 'launch/tpu_worker.sh', '--retries=1', '--', *ARGS], cwd=ROOT,
                          stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHON=str(script)))
  deadline = time.time() + 30
  while not (tmp_path / 'started').exists():
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 0 and 'relaunch 1 of 1' in stderr, stderr
