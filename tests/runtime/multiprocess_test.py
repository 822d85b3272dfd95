"""Two OS processes on localhost form one runtime (jax.distributed, gloo) and train like one process
with the same devices; a process whose peer dies exits with an error in bounded time."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import FAST, ROOT, TINY, error_line, finish, free_port

pytestmark = pytest.mark.multiprocess

STEPS = ['--config.train.steps=6', '--config.train.log_every=1', '--config.train.eval_every=3',
         '--config.train.checkpoint_every=3', '--config.train.batch_size=8']


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return {r['step']: r['loss'] for r in records if 'loss' in r}, {
      r['step']: r['val_loss'] for r in records if 'val_loss' in r}


def test_two_processes_match_one_process_and_resume_its_checkpoint(tmp_path):
  cache = f'--config.data.cache_dir={tmp_path / "cache"}'
  multi = tmp_path / 'multi'
  proc = subprocess.run(
      ['bash', 'launch/local_multiprocess.sh', '--num_processes=2', '--devices_per_process=2',
       f'--port={free_port()}', '--', f'--config={TINY}', f'--workdir={multi}', cache, *FAST,
       *STEPS, '--config.train.profile_steps=(2,1)', '--config.train.profile_all_hosts=True'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for index in (0, 1):   # every process traced the window, each into its own folder
    assert glob.glob(str(multi / 'profile' / f'process_{index}' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  with open(multi / 'goodput.jsonl') as f:   # one account of the run, written by process 0
    assert [json.loads(line)['event'] for line in f].count('start') == 1
  # one process trains to step 3 and saves; two processes resume its checkpoint: the one-process steps
  # must equal the two-process run's, and the resumed ones go on in the same global data order, nothing
  # repeated or skipped
  moved = tmp_path / 'moved'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'tokenformer_jax.main', f'--config={TINY}',
                         f'--workdir={moved}', cache, *FAST, *STEPS, '--stop_at_step=3'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (train_single, val_single), (train_multi, val_multi) = losses(moved), losses(multi)
  assert sorted(train_multi) == list(range(1, 7)) and sorted(val_multi) == [3, 6]
  assert sorted(train_single) == [1, 2, 3] and sorted(val_single) == [3]
  for step, loss in train_single.items():
    assert abs(train_multi[step] - loss) <= 1e-5 * abs(loss), (step, train_multi[step], loss)
  assert abs(val_multi[3] - val_single[3]) <= 1e-5 * abs(val_single[3])
  # only process 0 writes metrics and prints the sample
  assert (multi / 'logs' / 'process_1.log').read_text().count('--- sample ---') == 0

  proc = subprocess.run(
      ['bash', 'launch/local_multiprocess.sh', '--num_processes=2', '--devices_per_process=2',
       f'--port={free_port()}', '--', f'--config={TINY}', f'--workdir={moved}', cache, *FAST,
       *STEPS], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  train_moved, val_moved = losses(moved)
  assert sorted(train_moved) == list(range(1, 7)) and sorted(val_moved) == [3, 6]
  for step, loss in train_multi.items():
    assert abs(train_moved[step] - loss) <= 1e-5 * abs(loss), (step, train_moved[step], loss)
  assert abs(val_moved[6] - val_multi[6]) <= 1e-5 * abs(val_multi[6])


def test_peer_death_ends_the_survivor_in_one_line_within_the_heartbeat_timeout(tmp_path):
  """kill -9 of process 1 mid-training: process 0 ends with one line naming it and status 3, within
  --heartbeat_timeout_s (not JAX's C++ abort, status 134, a stack and a thread dump), and records it."""
  timeout_s = 10
  port = free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
  workdir = tmp_path / 'w'
  common = [sys.executable, '-m', 'tokenformer_jax.main', f'--config={TINY}', f'--workdir={workdir}',
            *FAST, '--config.train.steps=100000', '--config.train.log_every=1',
            '--config.train.checkpoint_every=100000', '--config.train.eval_every=100000',
            f'--coordinator_address=localhost:{port}', '--num_processes=2',
            f'--heartbeat_timeout_s={timeout_s}']
  procs = [subprocess.Popen(common + [f'--process_id={i}'], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]
  try:
    metrics = workdir / 'metrics.jsonl'
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count('\n') >= 3):
      assert time.time() < deadline and procs[0].poll() is None, 'training never started'
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    _, stderr = procs[0].communicate(timeout=timeout_s + 60)
    elapsed = time.time() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert procs[0].returncode == 3, stderr[-3000:]
  assert elapsed <= timeout_s + 20, elapsed   # heartbeats stop at the kill; a loaded machine adds some
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert lines[-1].startswith('error: process 1 of 2 stopped answering (no heartbeat for 10 s'), lines[-5:]
  assert 'Traceback' not in stderr and 'Check failure' not in stderr and 'Fatal Python' not in stderr
  assert json.loads((workdir / 'status').read_text())['exit_status'] == 3


def test_sigterm_to_one_process_saves_one_agreed_step_on_both(tmp_path):
  """A maintenance event signals one host: both save the same step and exit 143; the rerun is exact."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
  steps = ['--config.train.steps=100000', '--config.train.log_every=1', '--config.train.eval_every=1000',
           '--config.train.checkpoint_every=1000', '--config.train.sample_tokens=0',
           f'--config.data.cache_dir={tmp_path / "cache"}', '--distributed_timeout_s=60']

  def start(workdir, *extra):
    port = free_port()
    common = [sys.executable, '-m', 'tokenformer_jax.main', f'--config={TINY}', f'--workdir={workdir}',
              *FAST, *steps, *extra, f'--coordinator_address=localhost:{port}', '--num_processes=2']
    return [subprocess.Popen(common + [f'--process_id={i}'], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]

  workdir = tmp_path / 'w'
  procs = start(workdir)
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().count('\n') >= 5):
    assert time.time() < deadline and procs[0].poll() is None, 'training never started'
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  signalled = time.time()
  stderr = finish(procs)
  assert time.time() - signalled < 60
  assert [p.returncode for p in procs] == [143, 143], stderr[0][-2000:]
  saved = os.listdir(workdir / 'checkpoints')
  assert len(saved) == 1 and int(saved[0]) >= 5
  for text in stderr:
    assert f'SIGTERM: saved step {saved[0]}' in text
  stop = f'--stop_at_step={int(saved[0]) + 3}'
  reference = tmp_path / 'reference'
  for w in (workdir, reference):  # the rerun resumes; the reference runs uninterrupted to the same step
    procs = start(w, stop)
    finish(procs)
    assert [p.returncode for p in procs] == [0, 0]
  resumed, whole = losses(workdir)[0], losses(reference)[0]
  assert sorted(resumed) == sorted(whole) == list(range(1, int(saved[0]) + 4))
  assert resumed == whole


def test_processes_started_with_different_settings_all_stop_naming_the_keys(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
  port = free_port()
  common = [sys.executable, '-m', 'tokenformer_jax.main', f'--config={TINY}',
            f'--workdir={tmp_path / "w"}', *FAST, f'--coordinator_address=localhost:{port}',
            '--num_processes=2', '--distributed_timeout_s=60']
  procs = [subprocess.Popen(common + [f'--process_id={i}', f'--config.seed={i}'] + extra, cwd=ROOT,
                            env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
           for i, extra in enumerate([[], ['--stop_at_step=5']])]
  errors = finish(procs, timeout=300)
  for p, stderr in zip(procs, errors):
    line = error_line(stderr)
    assert p.returncode == 2, stderr[-2000:]
    assert line.startswith('error: the processes of this run were started with different settings'), line
    assert 'config.seed: 0 on process 0, 1 on process 1' in line and 'flags.stop_at_step' in line, line
  assert not (tmp_path / 'w').exists()


def test_two_processes_export_the_same_file_as_one(tmp_path):
  """Each table gathered across processes one at a time; process 0 alone writes."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
  base = [sys.executable, '-m', 'tokenformer_jax.main', f'--config={TINY}', f'--workdir={tmp_path / "w"}',
          *FAST, f'--config.data.cache_dir={tmp_path / "cache"}', '--config.train.sample_tokens=0']
  assert subprocess.run(base, cwd=ROOT, env=env, capture_output=True, timeout=600).returncode == 0
  one = subprocess.run(base + ['--mode=export', f'--export_file={tmp_path / "one.safetensors"}'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-2000:]
  port = free_port()
  # --config.mesh.tensor=2: the token tables are split over the two processes
  two = [base + ['--mode=export', f'--export_file={tmp_path / "two.safetensors"}',
                 '--config.mesh.tensor=2', f'--coordinator_address=localhost:{port}', '--num_processes=2',
                 f'--process_id={i}'] for i in range(2)]
  procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE) for cmd in two]
  errors = finish(procs)
  assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:]
  assert (tmp_path / 'one.safetensors').read_bytes() == (tmp_path / 'two.safetensors').read_bytes()
