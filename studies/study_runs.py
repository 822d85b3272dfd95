"""The runs of a CPU-scale study (studies/progressive_scaling/study.py, studies/kind_gap/study.py): each
one trained by the real command line in its own workdir (resumable), then kept as a small JSON record
(its validation curve against cumulative training FLOPs and its real training seconds) in the study's
records folder. A later call reuses a record without the workdir, so a study whose records are
committed goes on from a fresh checkout, and a study too long for one sitting finishes across several.
"""
import json
import os
import subprocess
import sys

from tokenformer_jax import config as config_lib
from tokenformer_jax.data import manifest
from tokenformer_jax.model import flops
from tokenformer_jax.telemetry import goodput
from tokenformer_jax.telemetry import metrics
from tokenformer_jax.training import stages


def fail(message: str):
  """Bad input to a study script: one line on stderr, exit status 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def lr_and_seed(lr: float, seed: int) -> dict:
  """A run's learning rate (the floor a tenth of it, as in the base recipe) and seed."""
  return {'optimizer.lr': lr, 'optimizer.min_lr': lr / 10, 'seed': seed}


def run_dirs(cfg, workdir: str) -> list[str]:
  return [stages.stage_dir(workdir, i) for i in range(len(cfg.stages))] if cfg.stages else [workdir]


def train(experiment: str, arm: str, changes: dict, workdir: str, cache: str) -> None:
  """Trains one run through tokenformer_jax.main (resuming if interrupted, a no-op when finished)."""
  command = [sys.executable, '-m', 'tokenformer_jax.main', f'--config={experiment}:{arm}',
             f'--workdir={workdir}', f'--config.data.cache_dir={cache}',
             *(f'--config.{key}={value!r}' for key, value in changes.items())]
  proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  if proc.returncode:
    sys.exit(f'error: {arm} ({changes}) failed: {proc.stderr.strip().splitlines()[-1]}')


def training_seconds(cfg, workdir: str) -> float:
  """The running time of a run's stages (goodput.running_seconds: from each training start to its end),
  however many calls it took."""
  return sum(goodput.running_seconds(goodput.read_records(run_dir)) for run_dir in run_dirs(cfg, workdir))


def val_curve(cfg, workdir: str) -> list[tuple[float, float]]:
  """(cumulative training FLOPs, validation loss) at every evaluation of a run or schedule."""
  vocab = config_lib.padded_vocab(cfg.model, cfg.data.vocab_size)
  tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
  runs = ([(stages.stage_config(cfg, workdir, i), stages.stage_dir(workdir, i))
           for i in range(len(cfg.stages))] if cfg.stages else [(cfg, workdir)])
  curve, spent, prev_end = [], 0.0, 0
  for run_cfg, run_dir in runs:
    step_flops = flops.train_flops_per_token(run_cfg.model, vocab, cfg.data.seq_len) * tokens_per_step
    # carry: the step count goes on across stages; reset: each stage counts from 0
    start = prev_end if cfg.growth.optimizer == 'carry' and cfg.stages else 0
    # the records of the attempt that last reached each step (a resumed run evaluates some again)
    evals = {r['step']: r['val_loss'] for r in metrics.kept_records(run_dir) if 'val_loss' in r}
    for step in sorted(evals):
      curve.append((spent + (step - start) * step_flops, evals[step]))
    spent += (run_cfg.train.steps - start) * step_flops
    prev_end = run_cfg.train.steps
  return curve


def flops_to_reach(curve, target: float) -> float | None:
  """FLOPs at which the curve first reaches `target` (linear between evaluations), or None."""
  prev = None
  for spent, loss in curve:
    if loss <= target:
      if prev is None:
        return spent
      (f0, l0), (f1, l1) = prev, (spent, loss)
      return f0 + (f1 - f0) * (l0 - target) / (l0 - l1)
    prev = (spent, loss)
  return None


class Runs:
  """The runs of one study. run() trains a run once and keeps its record; `reused` in the returned
  record says whether this call found it already finished."""

  def __init__(self, experiment: str, module, work: str, records: str, quick: bool):
    self.experiment, self.module, self.work, self.records = experiment, module, work, records
    self.suffix, self.cache = '-quick' if quick else '', os.path.join(work, 'cache')
    self.done = {}

  def data_prepared(self) -> bool:
    """Whether the data cache the runs share is prepared: runs started together before it is would
    each prepare it, into the same folder."""
    return os.path.exists(manifest.path(self.cache))

  def run(self, arm: str, changes: dict, name: str) -> dict:
    if name in self.done:
      return self.done[name]
    path = os.path.join(self.records, name + '.json')
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        record = json.load(f)
      if (record['arm'], record['changes']) != (arm, changes):
        sys.exit(f'error: {path} holds {record["arm"]} {record["changes"]}, not {arm} {changes}: '
                 'move it away to rerun')
      record['reused'] = True
    else:
      cfg = config_lib.apply_overrides(self.module.get_config(arm + self.suffix), changes)
      workdir = os.path.join(self.work, name)
      train(self.experiment, arm + self.suffix, changes, workdir, self.cache)
      record = {'arm': arm, 'changes': changes, 'curve': val_curve(cfg, workdir),
                'train_s': round(training_seconds(cfg, workdir), 1)}
      os.makedirs(self.records, exist_ok=True)
      with open(path + '.tmp', 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1)
      os.replace(path + '.tmp', path)   # a record exists only once its run has finished
      record['reused'] = False
    record['final_val_loss'] = round(record['curve'][-1][1], 4)
    record['total_gflop'] = round(record['curve'][-1][0] / 1e9, 1)
    seconds = 'recorded before' if record['reused'] else f"{record['train_s']:.0f} s"
    print(f'{name}: final val loss {record["final_val_loss"]:.4f} after {record["curve"][-1][0]:.3g} '
          f'FLOPs ({seconds})', flush=True)
    self.done[name] = record
    return record
