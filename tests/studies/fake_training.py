"""Stand-in training for the study drivers' logic tests: the drivers run in-process with every run's
validation curve made up from its config, so their tuning, carrying, seeds, tables, figures and records
are checked in seconds. The FLOPs on each curve are the real accounting (studies/study_runs.py's
val_curve, stage by stage), and study_runs_test.py trains one real run through the command line."""
import math

from tokenformer_jax import config as config_lib
from tokenformer_jax.model import flops

TRAIN_S = 1.5


def install(monkeypatch, study_runs) -> None:
  """Replaces the three steps of study_runs.Runs.run that train and read a workdir; the records, their
  reuse and the drivers' logic stay real."""
  monkeypatch.setattr(study_runs, 'train', lambda *args: None)
  monkeypatch.setattr(study_runs, 'val_curve', val_curve)
  monkeypatch.setattr(study_runs, 'training_seconds', lambda cfg, workdir: TRAIN_S)


def final_loss(cfg) -> float:
  """A made-up final loss with the shape the drivers must handle: unimodal in log(lr) around a best rate
  that falls with width and with a longer budget (so sweeps extend past an edge); TokenFormer behind dense
  by less as it widens, and by much less with a small value init; a longer warmup helping TokenFormer more."""
  m, o = cfg.model, cfg.optimizer
  width = m.d_model / 64
  steps = cfg.train.steps / 40
  tokenformer = m.kind == 'tokenformer'
  best_lr = (1e-3 if tokenformer else 3e-3) / width / math.sqrt(steps)
  gap = 0.4 / width * (0.2 if m.value_init_std else 1.0) if tokenformer else 0.0
  warmup = (0.15 if tokenformer else 0.05) * (o.warmup_frac > 0.05)
  return (4.0 - 0.3 * math.log2(width) - 0.2 * math.log2(steps) + 0.15 * math.log10(o.lr / best_lr) ** 2
          + gap - warmup + 0.02 * cfg.seed)


def val_curve(cfg, workdir: str) -> list[tuple[float, float]]:
  """(cumulative training FLOPs, validation loss) at every evaluation, as study_runs.val_curve counts
  them; the loss falls linearly to final_loss of the last stage."""
  del workdir
  vocab = config_lib.padded_vocab(cfg.model, cfg.data.vocab_size)
  tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
  runs = [config_lib.apply_overrides(cfg, {**stage, 'stages': ()}) for stage in cfg.stages] or [cfg]
  carry = cfg.growth.optimizer == 'carry' and bool(cfg.stages)
  points, spent, prev_end = [], 0.0, 0
  for run in runs:
    step_flops = flops.train_flops_per_token(run.model, vocab, cfg.data.seq_len) * tokens_per_step
    start = prev_end if carry else 0
    for step in range(start + run.train.eval_every, run.train.steps + 1, run.train.eval_every):
      points.append(spent + (step - start) * step_flops)
    spent += (run.train.steps - start) * step_flops
    prev_end = run.train.steps
  final = final_loss(runs[-1]) + (0.1 if carry else 0.0)
  return [(f, final + 1.0 * (len(points) - 1 - i) / len(points)) for i, f in enumerate(points)]
