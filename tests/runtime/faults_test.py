"""Faults: kill -9 at any moment, SIGTERM, Ctrl-C, a truncated or silently damaged checkpoint. Reruns
resume from the last complete checkpoint and reproduce the uninterrupted run's losses exactly."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import FAST, ROOT, TINY, damage_array_bytes

pytestmark = pytest.mark.slow

STEPS = ['--config.train.steps=24', '--config.train.log_every=1', '--config.train.checkpoint_every=4',
         '--config.train.eval_every=100', '--config.train.sample_tokens=0']


def command(workdir, cache, *extra):
  return [sys.executable, '-m', 'tokenformer_jax.main', f'--config={TINY}', f'--workdir={workdir}',
          f'--config.data.cache_dir={cache}', *FAST, *STEPS, *extra]


def final_losses(workdir):
  """step → loss, the last record of each step winning (a resumed run redoes some steps)."""
  losses = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      if 'loss' in record:
        losses[record['step']] = record['loss']
  return losses


def logged_steps(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  return open(path).read().count('"loss"') if os.path.exists(path) else 0


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  root = tmp_path_factory.mktemp('faults')
  cache = root / 'cache'
  proc = subprocess.run(command(root / 'whole', cache), cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return cache, final_losses(root / 'whole')


def start_and_interrupt(workdir, cache, sig, after_steps, *extra):
  proc = subprocess.Popen(command(workdir, cache, *extra), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while logged_steps(workdir) < after_steps:
    assert proc.poll() is None and time.time() < deadline, 'run ended before the interruption'
    time.sleep(0.02)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  return proc.returncode, stderr


def rerun_matches(workdir, cache, whole, *extra):
  """Reruns the interrupted command; its losses must equal the uninterrupted run's."""
  proc = subprocess.run(command(workdir, cache, *extra), cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert final_losses(workdir) == whole


@pytest.mark.parametrize('seed', [0, 1])
def test_kill_9_then_rerun_matches_uninterrupted(reference, tmp_path, seed):
  cache, whole = reference
  after = random.Random(seed).randint(2, 20)
  code, _ = start_and_interrupt(tmp_path / 'w', cache, signal.SIGKILL, after)
  assert code == -signal.SIGKILL
  rerun_matches(tmp_path / 'w', cache, whole)


def test_sigterm_saves_then_resumes(reference, tmp_path):
  cache, whole = reference
  # no periodic checkpoints: the one found afterwards can only come from the SIGTERM handler
  code, stderr = start_and_interrupt(tmp_path / 'w', cache, signal.SIGTERM, 6,
                                     '--config.train.checkpoint_every=1000')
  assert code == 143, stderr[-2000:]  # preempted, resumable: never 0
  assert 'SIGTERM: saved step' in stderr
  saved = int(stderr.split('SIGTERM: saved step')[1].split()[0].strip(','))
  assert os.listdir(tmp_path / 'w' / 'checkpoints') == [str(saved)] and 6 <= saved < 24
  rerun_matches(tmp_path / 'w', cache, whole)


def test_ctrl_c_saves_then_resumes(reference, tmp_path):
  """SIGINT as SIGTERM, but status 130 (interrupted: a launcher does not relaunch it), no traceback."""
  cache, whole = reference
  code, stderr = start_and_interrupt(tmp_path / 'w', cache, signal.SIGINT, 6,
                                     '--config.train.checkpoint_every=1000')
  assert code == 130, stderr[-2000:]
  assert 'SIGINT (Ctrl-C): saved step' in stderr and 'Traceback' not in stderr, stderr[-2000:]
  saved = int(stderr.split('SIGINT (Ctrl-C): saved step')[1].split()[0].strip(','))
  assert os.listdir(tmp_path / 'w' / 'checkpoints') == [str(saved)] and 6 <= saved < 24
  with open(tmp_path / 'w' / 'status') as f:
    assert json.load(f)['status'] == 'interrupted'
  rerun_matches(tmp_path / 'w', cache, whole)
  with open(tmp_path / 'w' / 'status') as f:
    assert json.load(f)['status'] == 'done'


def test_truncated_checkpoint_is_named_and_an_older_one_can_be_chosen(reference, tmp_path):
  cache, whole = reference
  workdir = tmp_path / 'w'
  first = command(workdir, cache, '--stop_at_step=8')
  assert subprocess.run(first, cwd=ROOT, capture_output=True, timeout=600).returncode == 0
  state_dir = workdir / 'checkpoints' / '8' / 'state'
  biggest = max((p for p in state_dir.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  with open(biggest, 'r+b') as f:
    f.truncate(100)
  proc = subprocess.run(command(workdir, cache), cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 2
  line = next(l for l in proc.stderr.splitlines() if l.startswith('error: '))
  assert f'checkpoint {workdir}/checkpoints/8 is corrupt or truncated' in line, line
  assert '--restore_step (available: [4])' in line
  rerun_matches(workdir, cache, whole, '--restore_step=4')
  assert any(p.name.startswith('8.set-aside-') for p in (workdir / 'checkpoints').iterdir())


def test_damaged_array_bytes_stop_eval_generate_and_train_naming_the_older_checkpoint(reference,
                                                                                       tmp_path):
  """Bytes of the embedding table overwritten in place (no file changes size): eval, generate and train
  each exit 2 with the corrupt-checkpoint line (not a NaN loss, a garbage sample or a divergence)."""
  cache, whole = reference
  workdir = tmp_path / 'w'
  first = command(workdir, cache, '--stop_at_step=8')
  assert subprocess.run(first, cwd=ROOT, capture_output=True, timeout=600).returncode == 0
  damage_array_bytes(workdir / 'checkpoints' / '8')
  for mode in (['--mode=eval'], ['--mode=generate', '--prompt=And God said'], []):
    proc = subprocess.run(command(workdir, cache, *mode), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
    assert proc.returncode == 2 and len(errors) == 1, (mode, proc.returncode, proc.stderr[-2000:])
    assert 'Traceback' not in proc.stderr and 'sample' not in proc.stdout, mode
    assert errors[0] == (f'error: checkpoint {workdir}/checkpoints/8 is corrupt or truncated (DamagedArrays: '
                         f'the digest written at save differs for 1 array: params/embedding); '
                         f'choose an older one with --restore_step (available: [4])'), errors[0]
  rerun_matches(workdir, cache, whole, '--restore_step=4')


@pytest.fixture()
def small_disk(tmp_path):
  """WORKDIR/checkpoints on a 600 KiB tmpfs: room for one checkpoint of the FAST model (about 400 KiB),
  not two. Grow it with remount(bytes). Needs root (mount); skipped where mounting is not allowed."""
  workdir = tmp_path / 'w'
  disk = workdir / 'checkpoints'
  disk.mkdir(parents=True)
  mount = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=600k', 'tmpfs', str(disk)],
                         capture_output=True, text=True)
  if mount.returncode:
    pytest.skip(f'cannot mount a small tmpfs here: {mount.stderr.strip()}')
  remount = lambda size: subprocess.run(['mount', '-o', f'remount,size={size}', str(disk)], check=True)
  try:
    yield workdir, remount
  finally:
    subprocess.run(['umount', str(disk)], check=True)


@pytest.mark.parametrize('async_save', [True, False])
def test_a_full_disk_is_one_error_line_and_the_rerun_resumes(reference, small_disk, async_save):
  """The save of step 8 finds the disk full (async: reported at the next save's wait). One error line
  naming the checkpoint and the bytes it needs, exit 2; with room again the rerun resumes from step 4
  and matches the uninterrupted run."""
  cache, whole = reference
  workdir, remount = small_disk
  mode = f'--config.train.async_checkpointing={async_save}'
  proc = subprocess.run(command(workdir, cache, mode), cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  saved = json.loads((workdir / 'checkpoints' / '4' / 'digests' / 'metadata').read_text())['arrays']
  n_bytes = sum(4 * max(1, math.prod(a['shape'])) for a in saved.values())   # float32 and int32
  assert errors[0].startswith(f'error: No space left on device while writing checkpoint '
                              f'{workdir}/checkpoints/8: it needs about {n_bytes / 2**20:.1f} MiB '
                              f'({n_bytes} bytes, the size of the state)'), errors[0]
  assert errors[0].endswith('the newest complete checkpoint, step 4, is intact: rerun to resume from it')
  remount('64m')
  rerun_matches(workdir, cache, whole, mode)


def test_an_async_save_cut_short_leaves_the_previous_checkpoint_and_an_exact_rerun(reference, tmp_path):
  """What kill -9 during a background write leaves: Orbax's temporary folder of the step, half
  written and never renamed. The rerun resumes from the step before, removes it, and is exact."""
  cache, whole = reference
  workdir = tmp_path / 'w'
  first = command(workdir, cache, '--stop_at_step=8')
  assert subprocess.run(first, cwd=ROOT, capture_output=True, timeout=600).returncode == 0
  checkpoints = workdir / 'checkpoints'
  partial = checkpoints / '8.orbax-checkpoint-tmp-1700000000000000'
  os.rename(checkpoints / '8', partial)
  for path in sorted((p for p in partial.rglob('*') if p.is_file()), key=str)[::2]:
    path.unlink()
  proc = subprocess.run(command(workdir, cache), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'resumed from step 4' in proc.stderr
  assert final_losses(workdir) == whole
  assert not partial.exists()

