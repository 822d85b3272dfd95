"""launch/sweep.py: override dicts → runs in their own workdirs, results.csv, skip/resume on rerun,
launchers, Ctrl-C."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import FAST, ROOT
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
  name = sweeps.run_name({'data.corpus': '/a b/*.txt'})
  assert name.startswith('data.corpus=_a_b__.txt-') and len(name) == len('data.corpus=_a_b__.txt-') + 8
  # names that read alike, long keys cut to one prefix, other base flags: all different workdirs
  long_a, long_b = {'x' * 100: 1}, {'x' * 100: 2}
  names = {sweeps.run_name({'data.corpus': '/d/a b.txt'}), sweeps.run_name({'data.corpus': '/d/a_b.txt'}),
           sweeps.run_name(long_a), sweeps.run_name(long_b),
           sweeps.run_name(long_a, ['--config.train.steps=5']), sweeps.run_name(long_a, ['--config.seed=1'])}
  assert len(names) == 6 and all(len(n) <= 89 for n in names)
  assert sweeps.run_name({'a': 1}, ['x']) == sweeps.run_name({'a': 1}, ['x'])  # stable across invocations


def run_sweep(experiment, root, cache, *args):
  return subprocess.run([sys.executable, 'launch/sweep.py', f'--config={experiment}', f'--root={root}',
                         *args, '--', *FAST, f'--config.data.cache_dir={cache}',
                         '--config.train.sample_tokens=0'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
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
  assert all(0 < float(r['goodput']) < 1 for r in rows)

  second = next(root.glob('optimizer.lr=0.003,model.n_ffn=64-*'))
  assert json.loads((second / 'status').read_text())['status'] == 'done'
  (second / 'status').unlink()  # as if it had been killed before it could say how it ended
  proc = run_sweep(experiment, root, cache)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count('finished before, skipped') == 1
  with open(root / 'results.csv') as f:
    assert len(list(csv.DictReader(f))) == 2
  assert [p.name for p in root.iterdir() if p.name.startswith('.results')] == []  # no temp file left

  printed = run_sweep(experiment, tmp_path / 'other', cache, '--print_only')
  assert printed.returncode == 0 and printed.stdout.count('tokenformer_jax.main') == 2
  assert not (tmp_path / 'other' / 'results.csv').exists()


@pytest.mark.slow
def test_sweep_runs_from_another_directory_with_a_relative_config(tmp_path):
  """Every run starts in the caller's directory, so a --config relative to it names the same file for the
  sweep and for its runs; the script imports the installed package, from wherever it is run."""
  (tmp_path / 'exp.py').write_text(EXPERIMENT.replace("[1e-3, 3e-3]", "[3e-3]"))
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'sweep.py'), '--config=exp.py',
                         '--root=root', '--', *FAST, f'--config.data.cache_dir={tmp_path / "cache"}',
                         '--config.train.sample_tokens=0'],
                        cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(tmp_path / 'root' / 'results.csv') as f:
    assert [(r['optimizer.lr'], r['status']) for r in csv.DictReader(f)] == [('0.003', 'done')]

def test_no_get_sweep(tmp_path):
  experiment = tmp_path / 'exp.py'
  experiment.write_text('def get_config():\n  return None\n')
  proc = run_sweep(experiment, tmp_path / 'root', tmp_path / 'cache')
  assert proc.returncode == 2 and 'defines no get_sweep()' in proc.stderr


def test_results_merge_across_invocations_and_stages_sort_numerically(tmp_path):
  root = tmp_path / 'root'
  root.mkdir()
  sweeps.write_csv(str(root), [{'run': 'a', 'status': 'failed'}, {'run': 'b', 'status': 'done', 'x': '1'}])
  sweeps.write_csv(str(root), [{'run': 'a', 'status': 'done', 'val_loss': 2.5}, {'run': 'c', 'status': 'done'}])
  with open(root / 'results.csv') as f:
    rows = {r['run']: r for r in csv.DictReader(f)}
  assert sorted(rows) == ['a', 'b', 'c'] and rows['a']['status'] == 'done' and rows['b']['x'] == '1'
  for index, loss in ((9, 9.0), (10, 10.0)):
    stage = tmp_path / 'w' / f'stage_{index}'
    stage.mkdir(parents=True)
    (stage / 'metrics.jsonl').write_text(f'{{"step": {index}, "loss": {loss}}}\n')
  assert sweeps.final_metrics(str(tmp_path / 'w'))['train_loss'] == 10.0  # the last stage's


@pytest.mark.slow
def test_the_slurm_recipe_runs_main_once_per_run(tmp_path):
  """The README's recipe, --launcher='sbatch launch/slurm_gpu.sbatch --', composed end to end: a
  stand-in `sbatch` runs the script and a stand-in `srun` runs its command, so each run trains."""
  experiment = tmp_path / 'exp.py'
  experiment.write_text(EXPERIMENT)
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'sbatch').write_text('#!/usr/bin/env bash\nexec bash "$@"\n')
  # srun's own options, then the command
  (bin_dir / 'srun').write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                                'echo "srun: $*" >> "$(dirname "$0")/srun.log"\nexec "$@"\n')
  for tool in ('sbatch', 'srun'):
    (bin_dir / tool).chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=sys.executable)
  root = tmp_path / 'root'
  proc = subprocess.run([sys.executable, 'launch/sweep.py', f'--config={experiment}', f'--root={root}',
                         "--launcher=sbatch launch/slurm_gpu.sbatch --", '--', *FAST,
                         f'--config.data.cache_dir={tmp_path / "cache"}', '--config.train.sample_tokens=0'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  calls = (bin_dir / 'srun.log').read_text().splitlines()
  assert len(calls) == 2 and all(c.count('-m tokenformer_jax.main') == 1 for c in calls), calls
  for run in root.glob('optimizer.lr=*'):
    assert (run / 'checkpoints' / '2').is_dir()  # trained
  with open(root / 'results.csv') as f:   # the job ran within sbatch here: its status is there at once
    rows = list(csv.DictReader(f))
  assert [r['status'] for r in rows] == ['done', 'done'] and all(float(r['val_loss']) > 0 for r in rows)
  proc = subprocess.run([sys.executable, 'launch/sweep.py', f'--config={experiment}', f'--root={root}',
                         "--launcher=sbatch launch/slurm_gpu.sbatch --", '--', *FAST,
                         f'--config.data.cache_dir={tmp_path / "cache"}', '--config.train.sample_tokens=0'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0 and proc.stdout.count('finished before, skipped') == 2, proc.stderr[-2000:]
  assert len((bin_dir / 'srun.log').read_text().splitlines()) == 2   # nothing launched again


@pytest.mark.slow
def test_a_queued_launcher_run_is_left_alone_until_it_reports(tmp_path):
  """A launcher that only queues (as sbatch does): the runs are 'submitted' and not submitted again
  until they have run; then their own status files and metrics are collected, and nothing relaunched."""
  experiment = tmp_path / 'exp.py'
  experiment.write_text(EXPERIMENT)
  queue = tmp_path / 'queue'
  launcher = tmp_path / 'enqueue'
  launcher.write_text('#!/usr/bin/env bash\nprintf "%q " "$@" >> "$(dirname "$0")/queue"\n'
                      'echo >> "$(dirname "$0")/queue"\n')
  launcher.chmod(0o755)
  root, cache = tmp_path / 'root', tmp_path / 'cache'
  for _ in range(2):
    proc = run_sweep(experiment, root, cache, f'--launcher={launcher} {sys.executable} -m tokenformer_jax.main')
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(root / 'results.csv') as f:
      assert [r['status'] for r in csv.DictReader(f)] == ['submitted', 'submitted']
  jobs = queue.read_text().splitlines()
  assert len(jobs) == 2
  for job in jobs:   # the scheduler runs them
    assert subprocess.run(job, shell=True, cwd=ROOT, capture_output=True, timeout=600).returncode == 0
  proc = run_sweep(experiment, root, cache, f'--launcher={launcher} {sys.executable} -m tokenformer_jax.main')
  assert proc.returncode == 0 and proc.stdout.count('finished before, skipped') == 2, proc.stderr[-2000:]
  with open(root / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['status'] for r in rows] == ['done', 'done'] and all(r['step'] == '2' for r in rows)
  assert len(queue.read_text().splitlines()) == 2


CTRL_C_EXPERIMENT = '''
from tokenformer_jax.config import base_config
from tokenformer_jax.sweeps import zipped


def get_config():
  return base_config()


def get_sweep():   # a short run, then one long enough to be interrupted
  return zipped(('optimizer.lr', [1e-3, 3e-3]), ('train.steps', [2, 100000]))
'''


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_rows_and_records_the_interrupted_run(tmp_path):
  experiment = tmp_path / 'exp.py'
  experiment.write_text(CTRL_C_EXPERIMENT)
  root = tmp_path / 'root'
  # its own session: the Ctrl-C below reaches the sweep and its run, as a terminal's does
  proc = subprocess.Popen([sys.executable, 'launch/sweep.py', f'--config={experiment}', f'--root={root}',
                           '--', *[f for f in FAST if not f.startswith('--config.train.steps=')],
                           f'--config.data.cache_dir={tmp_path / "cache"}',
                           '--config.train.sample_tokens=0', '--config.train.log_every=1',
                           '--config.train.eval_every=1000', '--config.train.checkpoint_every=1000'],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  deadline = time.time() + 600
  while not any(p.read_text().count('"loss"') >= 3 for p in root.glob('*100000*/metrics.jsonl')):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGINT)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 130, stderr[-2000:]
  with open(root / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['status'] for r in rows] == ['done', 'interrupted'], rows
  assert float(rows[0]['val_loss']) > 0 and int(rows[1]['step']) >= 3
