"""Run an experiment file's sweep: every override dict of its get_sweep() as its own run and workdir.

  python launch/sweep.py --config=experiments/tiny.py --root=/tmp/sweep                # run locally
  python launch/sweep.py --config=experiments/tiny.py --root=/tmp/sweep --print_only   # commands only
  python launch/sweep.py --config=... --root=/shared/sweep \
      --launcher='sbatch launch/slurm_gpu.sbatch --'                                   # submit each
  python launch/sweep.py ... -- --config.train.steps=100     # flags after -- go to every run

A launcher is a command prefix that takes main.py's flags (as launch/slurm_gpu.sbatch, tpu_pod.sh and
local_multiprocess.sh do after their `--`); without one, each run is `python -m tokenformer_jax.main`.
A run's workdir is ROOT/<overrides>-<hash>: the hash covers every override and the flags after --, so
two runs never share a workdir. Local runs go one after another.

How each run ended comes from the file it leaves in its workdir (WORKDIR/status, run_status.py: done,
preempted, interrupted or failed), whoever started it; metrics come from its workdir. A rerun of the
sweep skips done runs, resumes the others (main.py resumes from a workdir's latest checkpoint), and
leaves alone a run it submitted through the launcher that has not ended since (ROOT/<run>/
sweep_submitted.json is newer than its status; remove it to submit that run again, e.g. after its job
was killed). ROOT/results.csv holds one row per run, merged across invocations and written after every
run. Ctrl-C lets the current run save and stop (it gets the Ctrl-C too), records it, and ends the sweep
with status 130; a second Ctrl-C stops at once. The exit status is 2 if any run failed, was preempted
or interrupted (rerun the sweep to resume them).
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

from absl import app, flags

from tokenformer_jax import config as config_lib
from tokenformer_jax import sweeps
from tokenformer_jax.errors import UserError, fail
from tokenformer_jax.runtime.preemption import EXIT_INTERRUPTED
from tokenformer_jax.telemetry import run_status

SUBMITTED = 'sweep_submitted.json'   # in a run's workdir: when the sweep last started it through --launcher

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
  if not _PRINT_ONLY.value:
    os.makedirs(root, exist_ok=True)
  stop = _StopOnCtrlC()
  unfinished = []
  for overrides in runs:
    if stop.requested:
      break
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
    try:
      status = _status_of(name, workdir, command)
    except KeyboardInterrupt:   # the second Ctrl-C: the run was stopped at once
      status = 'interrupted'
    sweeps.write_csv(root, [{'run': name, 'status': status, **overrides, **sweeps.final_metrics(workdir)}])
    if status not in ('done', 'submitted'):
      unfinished.append(name)
  if not _PRINT_ONLY.value and runs:
    print(f'[sweep] results: {os.path.join(root, "results.csv")}')
  if stop.requested:
    print('[sweep] stopped by Ctrl-C: rerun the sweep to go on', file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)
  if unfinished:
    fail(f'{len(unfinished)} run(s) failed or were preempted or interrupted (rerun the sweep to resume '
         f'them): {", ".join(unfinished)}')


def _status_of(name: str, workdir: str, command: list[str]) -> str:
  """Starts the run unless it is done or still in flight from an earlier submission; returns its status
  (its own WORKDIR/status when written since it was started, else what the start tells)."""
  outcome = run_status.read(workdir) or {}
  submitted = _submitted_at(workdir)
  if outcome.get('status') == 'done':
    print(f'[sweep] {name}: finished before, skipped', flush=True)
    return 'done'
  if _LAUNCHER.value and submitted is not None and outcome.get('time', 0) < submitted:
    print(f'[sweep] {name}: submitted before and not ended since, left alone', flush=True)
    return 'submitted'
  print(f'[sweep] {name}: {shlex.join(command)}', flush=True)
  started = time.time()
  if _LAUNCHER.value:  # before the command: a run that ends at once writes its status after this
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, SUBMITTED), 'w', encoding='utf-8') as f:
      json.dump({'time': started, 'command': command}, f)
  code = subprocess.run(command).returncode
  outcome = run_status.read(workdir) or {}
  if outcome.get('time', 0) >= started:
    return outcome['status']
  if _LAUNCHER.value:  # accepted (the run reports later), or the launcher itself failed
    return 'submitted' if code == 0 else 'failed'
  return run_status.word(code)   # a local run refused before training: no status of its own


def _submitted_at(workdir: str) -> float | None:
  try:
    with open(os.path.join(workdir, SUBMITTED), encoding='utf-8') as f:
      return json.load(f)['time']
  except (OSError, ValueError, KeyError):
    return None


class _StopOnCtrlC:
  """The first Ctrl-C ends the sweep after the current run (which gets the Ctrl-C too, saves and stops);
  the second one raises KeyboardInterrupt here, as Python's default handler does."""

  def __init__(self):
    self.requested = False
    signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print('[sweep] Ctrl-C: stopping after the current run (Ctrl-C again stops at once)', file=sys.stderr,
          flush=True)


if __name__ == '__main__':
  app.run(main)
