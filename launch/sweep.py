"""Run an experiment file's sweep: every override dict of its get_sweep() as its own run and workdir.

  python launch/sweep.py --config=experiments/tiny.py --root=/tmp/sweep                # run locally
  python launch/sweep.py --config=experiments/tiny.py --root=/tmp/sweep --print_only   # commands only
  python launch/sweep.py --config=... --root=/shared/sweep \
      --launcher='sbatch launch/slurm_gpu.sbatch --'                                   # submit each
  python launch/sweep.py ... -- --config.train.steps=100     # flags after -- go to every run

Local runs go one after another. Rerunning a sweep skips finished runs (ROOT/<run>/sweep_done.json)
and resumes interrupted ones (main.py resumes from a workdir's latest checkpoint). Each finished run's
final metrics go into ROOT/results.csv. A failed run is reported and the sweep goes on; the exit
status is non-zero if any run failed.
"""
import csv
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from tokenformer_jax import config as config_lib  # noqa: E402
from tokenformer_jax import sweeps  # noqa: E402
from tokenformer_jax.errors import UserError, fail  # noqa: E402

_CONFIG = flags.DEFINE_string('config', None, 'Experiment file, optionally with :arg.')
_ROOT = flags.DEFINE_string('root', None, 'Folder holding one workdir per run.')
_PRINT_ONLY = flags.DEFINE_bool('print_only', False, 'Print the commands instead of running them.')
_LAUNCHER = flags.DEFINE_string('launcher', '', 'Prefix that submits a command (e.g. an sbatch line).')


def load_sweep(config_arg: str) -> list[dict]:
  path, _, arg = config_arg.partition(':')
  try:
    module = config_lib.experiment_module(path)
  except UserError as e:
    fail(e)
  if not hasattr(module, 'get_sweep'):
    fail(f'{path} defines no get_sweep()')
  runs = module.get_sweep(arg) if arg else module.get_sweep()
  if not runs or not all(isinstance(r, dict) for r in runs):
    fail(f'get_sweep() of {path} must return a non-empty list of override dicts')
  return runs


def final_metrics(workdir: str) -> dict:
  """Last train loss and last validation loss/perplexity of a run (its last stage for schedules)."""
  out = {}
  paths = sorted(os.path.join(d, 'metrics.jsonl') for d, _, files in os.walk(workdir)
                 if 'metrics.jsonl' in files)
  for path in paths:
    with open(path, encoding='utf-8') as f:
      for line in f:
        record = json.loads(line)
        if 'loss' in record:
          out.update(step=record['step'], train_loss=record['loss'])
        if 'val_loss' in record:
          out.update(val_step=record['step'], val_loss=record['val_loss'], val_ppl=record['val_ppl'])
  return out


def write_csv(root: str, rows: list[dict]) -> None:
  keys = sorted({k for row in rows for k in row}, key=lambda k: (k != 'run', k))
  tmp = os.path.join(root, 'results.csv.tmp')
  with open(tmp, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, os.path.join(root, 'results.csv'))


def main(argv):
  extra = argv[1:]
  if not _CONFIG.value or not _ROOT.value:
    fail('--config and --root are required')
  runs = load_sweep(_CONFIG.value)
  root = os.path.abspath(_ROOT.value)
  os.makedirs(root, exist_ok=True)
  rows, failed = [], []
  for overrides in runs:
    name = sweeps.run_name(overrides)
    workdir = os.path.join(root, name)
    command = [sys.executable, '-m', 'tokenformer_jax.main', f'--config={_CONFIG.value}',
               f'--workdir={workdir}', *sweeps.to_flags(overrides), *extra]
    if _LAUNCHER.value:
      command = shlex.split(_LAUNCHER.value) + command[1:]
    if _PRINT_ONLY.value:
      print(shlex.join(command))
      continue
    done = os.path.join(workdir, 'sweep_done.json')
    if os.path.exists(done):
      print(f'[sweep] {name}: finished before, skipped', flush=True)
    else:
      print(f'[sweep] {name}: {shlex.join(command)}', flush=True)
      if subprocess.run(command, cwd=ROOT).returncode != 0:
        failed.append(name)
        rows.append({'run': name, 'status': 'failed', **overrides})
        continue
      if _LAUNCHER.value:  # submitted, not finished: nothing to collect yet
        continue
      with open(done, 'w', encoding='utf-8') as f:
        json.dump(final_metrics(workdir), f)
    with open(done, encoding='utf-8') as f:
      rows.append({'run': name, 'status': 'done', **overrides, **json.load(f)})
  if rows:
    write_csv(root, rows)
    print(f'[sweep] results: {os.path.join(root, "results.csv")}')
  if failed:
    fail(f'{len(failed)} run(s) failed: {", ".join(failed)}')


if __name__ == '__main__':
  app.run(main)
