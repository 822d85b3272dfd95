"""launch/sweep.py: override dicts → runs in their own workdirs, results.csv, skip/resume on rerun."""
import csv
import subprocess
import sys

from tests.conftest import FAST, ROOT
from tokenformer_jax import sweeps

EXPERIMENT = '''
from tokenformer_jax.config import base_config
from tokenformer_jax.sweeps import product


def get_config():
  return base_config()


def get_sweep():
  return product(('optimizer.lr', [1e-3, 3e-3]), ('model.n_ffn', [64]))
'''


def test_helpers():
  grid = sweeps.product(('a', [1, 2]), sweeps.zipped(('b', [3, 4]), ('c', ['x', 'y'])))
  assert grid == [{'a': 1, 'b': 3, 'c': 'x'}, {'a': 1, 'b': 4, 'c': 'y'},
                  {'a': 2, 'b': 3, 'c': 'x'}, {'a': 2, 'b': 4, 'c': 'y'}]
  assert sweeps.to_flags({'stages': ((1, 2, 3, 4),), 'optimizer.lr': 0.001}) == [
      '--config.stages=((1, 2, 3, 4),)', '--config.optimizer.lr=0.001']
  assert sweeps.run_name({'data.corpus': '/a b/*.txt'}) == 'data.corpus=_a_b__.txt'


def run_sweep(experiment, root, cache, *args):
  return subprocess.run([sys.executable, 'launch/sweep.py', f'--config={experiment}', f'--root={root}',
                         *args, '--', *FAST, f'--config.data.cache_dir={cache}',
                         '--config.train.sample_tokens=0'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_sweep_runs_collects_and_skips(tmp_path):
  experiment = tmp_path / 'exp.py'
  experiment.write_text(EXPERIMENT)
  root, cache = tmp_path / 'root', tmp_path / 'cache'
  proc = run_sweep(experiment, root, cache)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(root / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['optimizer.lr'] for r in rows] == ['0.001', '0.003']
  assert all(r['status'] == 'done' and r['step'] == '2' and float(r['val_loss']) > 0 for r in rows)

  (root / 'optimizer.lr=0.003,model.n_ffn=64' / 'sweep_done.json').unlink()  # "interrupted"
  proc = run_sweep(experiment, root, cache)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count('finished before, skipped') == 1
  with open(root / 'results.csv') as f:
    assert len(list(csv.DictReader(f))) == 2

  printed = run_sweep(experiment, tmp_path / 'other', cache, '--print_only')
  assert printed.returncode == 0 and printed.stdout.count('tokenformer_jax.main') == 2
  assert not (tmp_path / 'other' / 'results.csv').exists()


def test_no_get_sweep(tmp_path):
  experiment = tmp_path / 'exp.py'
  experiment.write_text('def get_config():\n  return None\n')
  proc = run_sweep(experiment, tmp_path / 'root', tmp_path / 'cache')
  assert proc.returncode == 2 and 'defines no get_sweep()' in proc.stderr
