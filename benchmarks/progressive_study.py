"""The progressive-scaling study at CPU scale, in one command: tunes the learning rate of both
from-scratch baselines (TokenFormer and the dense Transformer of equal non-embedding parameters), runs
every growth arm of experiments/progressive_scaling_cpu.py at the from-scratch TokenFormer's best, then a
second seed of both baselines and of the best growth arm; draws validation loss against cumulative
training FLOPs and writes the table. Every run is resumable in its own workdir: rerun to continue.

  python benchmarks/progressive_study.py                 # the full study (hours on 2 cores)
  python benchmarks/progressive_study.py --quick         # the pipeline check (tiny sizes)

Outputs (--out, default experiments/results; the quick check defaults to a temporary folder):
  progressive_scaling.png   validation loss vs cumulative training FLOPs: both baselines at their best
                            learning rate and every growth arm (seed 0)
  progressive_scaling.csv   per run: arm, lr, seed, final validation loss, total FLOPs, the FLOPs at
                            which it first reaches the strongest baseline's final loss divided by that
                            baseline's FLOPs (ratio_to_best_baseline; empty: never) and the same against
                            the from-scratch TokenFormer (ratio_to_scratch), its training seconds as its
                            goodput records hold them, and whether this call found it finished (reused)
  progressive_scaling.md    the same as Markdown tables (the learning-rate sweep, then the arms)
FLOPs per step = train_flops_per_token(model of that stage) × batch × sequence (tokenformer_jax/flops).
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import progressive_scaling_cpu  # noqa: E402
from tokenformer_jax import config as config_lib  # noqa: E402
from tokenformer_jax import flops, goodput, stages  # noqa: E402

EXPERIMENT = os.path.join(ROOT, 'experiments', 'progressive_scaling_cpu.py')
BASELINES = progressive_scaling_cpu.BASELINES


def overrides(lr: float, seed: int) -> dict:
  """A run's learning rate (the floor a tenth of it, as in the base recipe) and seed."""
  return {'optimizer.lr': lr, 'optimizer.min_lr': lr / 10, 'seed': seed}


def run_dirs(cfg, workdir: str) -> list[str]:
  return [stages.stage_dir(workdir, i) for i in range(len(cfg.stages))] if cfg.stages else [workdir]


def run_arm(arm: str, changes: dict, workdir: str, cache: str) -> None:
  """Trains one run (resuming if interrupted, a no-op when finished)."""
  command = [sys.executable, '-m', 'tokenformer_jax.main', f'--config={EXPERIMENT}:{arm}',
             f'--workdir={workdir}', f'--config.data.cache_dir={cache}',
             *(f'--config.{key}={value!r}' for key, value in changes.items())]
  proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True)
  if proc.returncode:
    sys.exit(f'error: arm {arm} ({changes}) failed: {proc.stderr.strip().splitlines()[-1]}')


def starts_and_seconds(cfg, workdir: str) -> tuple[int, float]:
  """(training starts, seconds from each start to its last record, summed) over a run's stages, from
  their goodput records: the run's real time, whichever call of the study trained it."""
  starts, seconds = 0, 0.0
  for run_dir in run_dirs(cfg, workdir):
    began = last = None
    for record in goodput.read_records(run_dir):
      if record.get('event') == 'start':
        seconds += (last - began) if began is not None else 0.0
        began, starts = record['time'], starts + 1
      last = record['time']
    seconds += (last - began) if began is not None else 0.0
  return starts, seconds


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
    with open(os.path.join(run_dir, 'metrics.jsonl'), encoding='utf-8') as f:
      records = [json.loads(line) for line in f]
    evals = {r['step']: r['val_loss'] for r in records if 'val_loss' in r}  # last record per step wins
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


def plot(curves: dict, target: float, path: str, title: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 5))
  for label, curve in curves.items():
    xs, ys = zip(*curve)
    ax.plot(xs, ys, marker='.', label=label, linewidth=2 if label.split()[0] in BASELINES else 1)
  ax.axhline(target, color='gray', linestyle=':', linewidth=1, label='strongest baseline, final')
  ax.set_xscale('log')
  ax.set_xlabel('cumulative training FLOPs')
  ax.set_ylabel('validation loss (nats/token)')
  ax.set_title(title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


class Study:
  """The runs of one study: each trained (or found finished) once, its curve and row kept."""

  def __init__(self, work: str, suffix: str):
    self.work, self.suffix, self.cache = work, suffix, os.path.join(work, 'cache')
    self.curves, self.rows = {}, {}

  def run(self, arm: str, lr: float, seed: int) -> dict:
    key = (arm, lr, seed)
    if key in self.rows:
      return self.rows[key]
    changes = overrides(lr, seed)
    cfg = config_lib.apply_overrides(progressive_scaling_cpu.get_config(arm + self.suffix), changes)
    workdir = os.path.join(self.work, f'{arm}-lr{lr:g}-seed{seed}')
    before, _ = starts_and_seconds(cfg, workdir)
    run_arm(arm + self.suffix, changes, workdir, self.cache)
    after, seconds = starts_and_seconds(cfg, workdir)
    self.curves[key] = curve = val_curve(cfg, workdir)
    self.rows[key] = row = {'arm': arm, 'lr': lr, 'seed': seed, 'final_val_loss': round(curve[-1][1], 4),
                            'total_gflop': round(curve[-1][0] / 1e9, 1), 'train_s': round(seconds, 1),
                            'reused': before == after}
    print(f'{arm} lr {lr:g} seed {seed}: final val loss {row["final_val_loss"]:.4f} after '
          f'{curve[-1][0]:.3g} FLOPs ({"finished before" if row["reused"] else f"{seconds:.0f} s"})',
          flush=True)
    return row

  def best_lr(self, arm: str, lrs) -> float:
    return min(lrs, key=lambda lr: self.run(arm, lr, 0)['final_val_loss'])


def _cell(value, fmt) -> str:
  return 'not reached' if value is None else format(value, fmt)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes: checks the pipeline')
  parser.add_argument('--out', default=None, help='where the figure and tables go')
  parser.add_argument('--workdir', default=None, help='where the runs go (resumable)')
  parser.add_argument('--arms', default=None,
                      help='comma-separated subset of the growth arms (default: all; both baselines '
                           'always run)')
  parser.add_argument('--lrs', default=None, help='the baselines\' learning rates (comma-separated; '
                      'default: the experiment\'s LRS, or its quick ones)')
  parser.add_argument('--seeds', type=int, default=2, help='seeds of the baselines and the best arm')
  args = parser.parse_args()
  out = args.out or (tempfile.mkdtemp(prefix='study_') if args.quick
                     else os.path.join(ROOT, 'experiments', 'results'))
  work = args.workdir or os.path.join(out if args.quick else tempfile.gettempdir(),
                                      'progressive_study_quick' if args.quick else 'progressive_study')
  os.makedirs(out, exist_ok=True)
  arms = progressive_scaling_cpu.GROWTH_ARMS
  if args.arms:
    unknown = set(args.arms.split(',')) - set(arms)
    if unknown:
      sys.exit(f'error: unknown growth arms {sorted(unknown)}; choose from {arms}')
    arms = [a for a in arms if a in args.arms.split(',')]
  try:
    lrs = ([float(v) for v in args.lrs.split(',')] if args.lrs else
           progressive_scaling_cpu.QUICK['lrs'] if args.quick else progressive_scaling_cpu.LRS)
  except ValueError:
    sys.exit(f'error: --lrs wants comma-separated numbers, got {args.lrs!r}')
  if args.seeds < 1:
    sys.exit(f'error: --seeds must be at least 1, got {args.seeds}')

  study = Study(work, '-quick' if args.quick else '')
  best = {arm: study.best_lr(arm, lrs) for arm in BASELINES}        # 1: tune both baselines
  for arm in arms:                                                   # 2: growth at scratch's best
    study.run(arm, best['scratch'], 0)
  best_arm = min(arms, key=lambda a: study.rows[(a, best['scratch'], 0)]['final_val_loss'], default=None)
  for seed in range(1, args.seeds):                                  # 3: the noise between seeds
    for arm in BASELINES + ((best_arm,) if best_arm else ()):
      study.run(arm, best.get(arm, best['scratch']), seed)

  baselines = {arm: study.rows[(arm, best[arm], 0)] for arm in BASELINES}
  strongest = min(BASELINES, key=lambda arm: baselines[arm]['final_val_loss'])
  target = baselines[strongest]['final_val_loss']
  target_flops = baselines[strongest]['total_gflop'] * 1e9
  scratch = baselines['scratch']
  for key, row in study.rows.items():
    curve = study.curves[key]
    reach = flops_to_reach(curve, target)
    reach_scratch = flops_to_reach(curve, scratch['final_val_loss'])
    row.update(gflop_to_best_baseline=None if reach is None else round(reach / 1e9, 1),
               ratio_to_best_baseline=None if reach is None else round(reach / target_flops, 3),
               ratio_to_scratch=None if reach_scratch is None
               else round(reach_scratch / (scratch['total_gflop'] * 1e9), 3))
  rows = list(study.rows.values())
  with open(os.path.join(out, 'progressive_scaling.csv'), 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)

  lines = ['| baseline | ' + ' | '.join(f'lr {lr:g}' for lr in lrs) + ' |', '|---|' + '---|' * len(lrs)]
  for arm in BASELINES:
    cells = [f"{study.rows[(arm, lr, 0)]['final_val_loss']:.4f}" for lr in lrs]
    cells = [f'**{c}**' if lr == best[arm] else c for c, lr in zip(cells, lrs)]
    lines.append(f'| {arm} | ' + ' | '.join(cells) + ' |')
  lines += ['', f'Strongest baseline: {strongest} (lr {best[strongest]:g}), final val loss {target:.4f}.', '',
            '| arm | lr | seed | final val loss | total GFLOP | ratio to best baseline | ratio to scratch '
            '| train s |', '|---|---|---|---|---|---|---|---|']
  shown = [key for key in study.rows if key[0] not in BASELINES or key[1] == best[key[0]]]
  for key in shown:
    row = study.rows[key]
    lines.append(f"| {row['arm']} | {row['lr']:g} | {row['seed']} | {row['final_val_loss']:.4f} | "
                 f"{row['total_gflop']:,.0f} | {_cell(row['ratio_to_best_baseline'], '.3f')} | "
                 f"{_cell(row['ratio_to_scratch'], '.3f')} | {row['train_s']:.0f} |")
  table = '\n'.join(lines)
  with open(os.path.join(out, 'progressive_scaling.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  curves = {f'{key[0]} (lr {key[1]:g})': study.curves[key] for key in shown if key[2] == 0}
  plot(curves, target, os.path.join(out, 'progressive_scaling.png'),
       'TokenFormer growth vs tuned baselines' + (' (quick check)' if args.quick else ''))
  print(table)
  print(f'figure and tables in {out}')


if __name__ == '__main__':
  main()
