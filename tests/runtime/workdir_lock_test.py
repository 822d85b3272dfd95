"""One run per workdir: a held lock refuses a second run, a dead holder's lock is taken over."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import FAST, error_line, run_main
from tokenformer_jax.errors import UserError
from tokenformer_jax.runtime import workdir_lock


def _write_lock(workdir, host, pid, age_s=0.0):
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, workdir_lock.FILE)
  with open(path, 'w') as f:
    json.dump({'host': host, 'pid': pid, 'started': 'earlier'}, f)
  os.utime(path, (time.time() - age_s,) * 2)
  return path


def test_a_held_workdir_is_refused_naming_the_holder(tmp_path):
  with workdir_lock.hold(str(tmp_path)):
    assert os.path.exists(tmp_path / workdir_lock.FILE)
    with pytest.raises(UserError, match=f'in use by another run \\(host {socket.gethostname()}, pid '
                                        f'{os.getpid()}'):
      with workdir_lock.hold(str(tmp_path)):
        pass
  assert not os.path.exists(tmp_path / workdir_lock.FILE)  # released


def test_stale_locks_are_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  _write_lock(tmp_path, socket.gethostname(), dead.pid)
  with workdir_lock.hold(str(tmp_path)):
    with open(tmp_path / workdir_lock.FILE) as f:
      assert json.load(f)['pid'] == os.getpid()
  _write_lock(tmp_path, 'another-host', 1, age_s=workdir_lock.STALE_S + 10)
  with workdir_lock.hold(str(tmp_path)):
    pass
  _write_lock(tmp_path, 'another-host', 1, age_s=10)  # a live heartbeat from elsewhere
  with pytest.raises(UserError, match='host another-host, pid 1'):
    with workdir_lock.hold(str(tmp_path)):
      pass


def test_a_refused_run_leaves_no_workdir_behind(tmp_path):
  with workdir_lock.hold(str(tmp_path / 'new')):
    pass
  assert not (tmp_path / 'new').exists()


@pytest.mark.slow
def test_second_training_run_on_a_held_workdir(tmp_path):
  workdir = tmp_path / 'w'
  _write_lock(workdir, socket.gethostname(), os.getpid())  # this test process: alive
  code, _, err = run_main(*FAST, workdir=workdir)
  assert code == 2 and 'is in use by another run' in error_line(err), err
  assert sorted(os.listdir(workdir)) == [workdir_lock.FILE]
  code, _, err = run_main(*FAST, '--stop_at_step=0', workdir=tmp_path / 'x')
  assert code == 2 and '--stop_at_step must be positive' in error_line(err), err


def test_hold_here_locks_for_one_process_without_jax(tmp_path):
  """A prepare's lock: the same file and refusal, taken without importing jax (Beam workers import
  the prepare code and stay lean)."""
  with workdir_lock.hold_here(str(tmp_path / 'd')):
    with pytest.raises(UserError, match=f'in use by another run \\(host {socket.gethostname()}, pid '
                                        f'{os.getpid()}'):
      with workdir_lock.hold(str(tmp_path / 'd')):
        pass
  assert not (tmp_path / 'd').exists()  # created by the lock, released empty
  code = ('import sys; from tokenformer_jax.runtime import workdir_lock; from tokenformer_jax.data import build; '
          f'cm = workdir_lock.hold_here({str(tmp_path / "e")!r}); cm.__enter__(); '
          "assert 'jax' not in sys.modules, 'jax imported'")
  subprocess.run([sys.executable, '-c', code], check=True, timeout=120)
