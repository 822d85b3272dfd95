"""run_status.py: WORKDIR/status, written whole or not at all, never into a workdir that is not there."""
import os

from tokenformer_jax.telemetry import run_status


def test_written_whole_and_read_back(tmp_path):
  for code, word in ((143, 'preempted'), (130, 'interrupted'), (3, 'failed'), (0, 'done')):
    run_status.write(str(tmp_path), code)
    record = run_status.read(str(tmp_path))
    assert (record['status'], record['exit_status']) == (word, code)
  assert os.listdir(tmp_path) == ['status']   # no temporary file left


def test_never_creates_a_workdir(tmp_path):
  run_status.write(str(tmp_path / 'missing'), 2)
  assert not (tmp_path / 'missing').exists() and run_status.read(str(tmp_path / 'missing')) is None
