"""The progressive-scaling study at CPU scale, in one command: runs every arm of
experiments/progressive_scaling_cpu.py (each resumable, in its own workdir), then draws validation loss
against cumulative training FLOPs and writes the table.

  python benchmarks/progressive_study.py                 # the full study (≈ 1 h or more on 2 cores)
  python benchmarks/progressive_study.py --quick         # the ≤ 5 min pipeline check (tiny sizes)

Outputs (--out, default experiments/results; the quick check defaults to a temporary folder):
  progressive_scaling.png   validation loss vs cumulative training FLOPs, every arm
  progressive_scaling.csv   per arm: final validation loss, total FLOPs, FLOPs needed to reach the
                            from-scratch model's final validation loss and the ratio to its FLOPs
  progressive_scaling.md    the same as a Markdown table (pasted into the README)
FLOPs per step = train_flops_per_token(model of that stage) × batch × sequence (tokenformer_jax/flops).
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import progressive_scaling_cpu  # noqa: E402
from tokenformer_jax import config as config_lib  # noqa: E402
from tokenformer_jax import flops, stages  # noqa: E402

EXPERIMENT = os.path.join(ROOT, 'experiments', 'progressive_scaling_cpu.py')


def run_arm(arm: str, workdir: str, cache: str) -> float:
  """Trains one arm (resuming if interrupted); returns the wall time of this call."""
  start = time.perf_counter()
  command = [sys.executable, '-m', 'tokenformer_jax.main', f'--config={EXPERIMENT}:{arm}',
             f'--workdir={workdir}', f'--config.data.cache_dir={cache}']
  proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True)
  if proc.returncode:
    sys.exit(f'error: arm {arm} failed: {proc.stderr.strip().splitlines()[-1]}')
  return time.perf_counter() - start


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


def plot(curves: dict, path: str, title: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 5))
  for arm, curve in curves.items():
    xs, ys = zip(*curve)
    ax.plot(xs, ys, marker='.', label=arm, linewidth=2 if arm in ('scratch', 'exact_carry') else 1)
  ax.axhline(curves['scratch'][-1][1], color='gray', linestyle=':', linewidth=1)
  ax.set_xscale('log')
  ax.set_xlabel('cumulative training FLOPs')
  ax.set_ylabel('validation loss (nats/token)')
  ax.set_title(title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes: checks the pipeline')
  parser.add_argument('--out', default=None, help='where the figure and tables go')
  parser.add_argument('--workdir', default=None, help='where the runs go (resumable)')
  parser.add_argument('--arms', default=None,
                      help='comma-separated subset of the arms (default: all; scratch is always run)')
  args = parser.parse_args()
  out = args.out or (tempfile.mkdtemp(prefix='study_') if args.quick
                     else os.path.join(ROOT, 'experiments', 'results'))
  work = args.workdir or os.path.join(out if args.quick else tempfile.gettempdir(),
                                      'progressive_study_quick' if args.quick else 'progressive_study')
  os.makedirs(out, exist_ok=True)
  suffix = '-quick' if args.quick else ''
  cache = os.path.join(work, 'cache')

  arms = progressive_scaling_cpu.ARMS
  if args.arms:
    unknown = set(args.arms.split(',')) - set(arms)
    if unknown:
      sys.exit(f'error: unknown arms {sorted(unknown)}; choose from {arms}')
    arms = [a for a in arms if a == 'scratch' or a in args.arms.split(',')]
  curves, rows = {}, []
  for arm in arms:
    cfg = progressive_scaling_cpu.get_config(arm + suffix)
    workdir = os.path.join(work, arm)
    wall = run_arm(arm + suffix, workdir, cache)
    curves[arm] = val_curve(cfg, workdir)
    rows.append({'arm': arm, 'wall_s': round(wall, 1)})
    print(f'{arm}: final val loss {curves[arm][-1][1]:.4f} after {curves[arm][-1][0]:.3g} FLOPs '
          f'({wall:.0f}s this call)', flush=True)

  target, scratch_flops = curves['scratch'][-1][1], curves['scratch'][-1][0]
  for row in rows:
    curve = curves[row['arm']]
    reach = flops_to_reach(curve, target)
    row.update(final_val_loss=round(curve[-1][1], 4), total_gflop=round(curve[-1][0] / 1e9, 1),
               gflop_to_scratch_final=None if reach is None else round(reach / 1e9, 1),
               ratio_to_scratch=None if reach is None else round(reach / scratch_flops, 3))
  with open(os.path.join(out, 'progressive_scaling.csv'), 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  lines = ['| arm | final val loss | total GFLOP | GFLOP to reach scratch final | ratio to scratch |',
           '|---|---|---|---|---|']
  for row in rows:
    reach = row['gflop_to_scratch_final']
    lines.append(f"| {row['arm']} | {row['final_val_loss']:.4f} | {row['total_gflop']:,.0f} | "
                 f"{'not reached' if reach is None else f'{reach:,.0f}'} | "
                 f"{'—' if row['ratio_to_scratch'] is None else row['ratio_to_scratch']} |")
  table = '\n'.join(lines)
  with open(os.path.join(out, 'progressive_scaling.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  plot(curves, os.path.join(out, 'progressive_scaling.png'),
       'TokenFormer growth vs from scratch' + (' (quick check)' if args.quick else ''))
  print(table)
  print(f'figure and tables in {out}')


if __name__ == '__main__':
  main()
