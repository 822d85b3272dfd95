"""Run an experiment file's sweep: every override dict of its get_sweep() as its own run and workdir.

  python launch/sweep.py --config=experiments/tiny.py --root=/tmp/sweep                # run locally
  python launch/sweep.py --config=experiments/tiny.py --root=/tmp/sweep --print_only   # commands only
  python launch/sweep.py --config=... --root=/shared/sweep \
      --launcher='sbatch launch/slurm_gpu.sbatch --'                                   # submit each
  python launch/sweep.py ... -- --config.train.steps=100     # flags after -- go to every run

A launcher is a command prefix that takes main.py's flags (as launch/slurm_gpu.sbatch, tpu_pod.sh and
local_multiprocess.sh do after their `--`); without one, each run is `python -m tokenformer_jax.main`.
A run's workdir is ROOT/<overrides>-<hash>: the hash covers every override and the flags after --, so
two runs never share a workdir. Local runs go one after another. Rerunning a sweep skips finished
runs (ROOT/<run>/sweep_done.json, written only for a run that exited 0) and resumes interrupted or
preempted ones (main.py resumes from a workdir's latest checkpoint). ROOT/results.csv holds one row
per run, merged across invocations. A failed run is reported and the sweep goes on; the exit status
is non-zero if any run failed or was preempted.
"""
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
from tokenformer_jax.train import EXIT_PREEMPTED  # noqa: E402
from tokenformer_jax.errors import UserError, fail  # noqa: E402

_CONFIG = flags.DEFINE_string('config', None, 'Experiment file, optionally with :arg.')
_ROOT = flags.DEFINE_string('root', None, 'Folder holding one workdir per run.')
_PRINT_ONLY = flags.DEFINE_bool('print_only', False, 'Print the commands instead of running them.')
_LAUNCHER = flags.DEFINE_string('launcher', '', "Prefix that takes main.py's flags and starts the run "
                                'itself (e.g. an sbatch line ending in --).')


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


def main(argv):
  extra = argv[1:]
  if not _CONFIG.value or not _ROOT.value:
    fail('--config and --root are required')
  runs = load_sweep(_CONFIG.value)
  root = os.path.abspath(_ROOT.value)
  os.makedirs(root, exist_ok=True)
  rows, failed = [], []
  for overrides in runs:
    name = sweeps.run_name(overrides, [_CONFIG.value, *extra])
    workdir = os.path.join(root, name)
    main_flags = [f'--config={_CONFIG.value}', f'--workdir={workdir}', *sweeps.to_flags(overrides), *extra]
    if _LAUNCHER.value:  # the launcher starts main.py itself, with these flags
      command = shlex.split(_LAUNCHER.value) + main_flags
    else:
      command = [sys.executable, '-m', 'tokenformer_jax.main', *main_flags]
    if _PRINT_ONLY.value:
      print(shlex.join(command))
      continue
    done = os.path.join(workdir, 'sweep_done.json')
    if os.path.exists(done):
      print(f'[sweep] {name}: finished before, skipped', flush=True)
    else:
      print(f'[sweep] {name}: {shlex.join(command)}', flush=True)
      code = subprocess.run(command, cwd=ROOT).returncode
      if code != 0:  # a preempted run (status 143) is not done either: the next invocation resumes it
        failed.append(name)
        rows.append({'run': name, 'status': 'preempted' if code == EXIT_PREEMPTED else 'failed',
                     **overrides})
        continue
      if _LAUNCHER.value:  # submitted (or run by the launcher): its metrics come on a later invocation
        rows.append({'run': name, 'status': 'submitted', **overrides})
        continue
      with open(done, 'w', encoding='utf-8') as f:
        json.dump(sweeps.final_metrics(workdir), f)
    with open(done, encoding='utf-8') as f:
      rows.append({'run': name, 'status': 'done', **overrides, **json.load(f)})
  if rows:
    sweeps.write_csv(root, rows)
    print(f'[sweep] results: {os.path.join(root, "results.csv")}')
  if failed:
    fail(f'{len(failed)} run(s) failed or were preempted (rerun the sweep to resume them): '
         f'{", ".join(failed)}')


if __name__ == '__main__':
  app.run(main)
