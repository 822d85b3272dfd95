"""The progressive-scaling study at CPU scale, in one command: tunes the learning rate of both
from-scratch baselines (TokenFormer and the dense Transformer of equal non-embedding parameters), runs
every growth arm of studies/progressive_scaling/experiment.py at the from-scratch TokenFormer's best, then a
second seed of both baselines and of the best growth arm; draws validation loss against cumulative
training FLOPs and writes the table. Every run is resumable in its own workdir, and each finished one
is kept as a record (studies/study_runs.py; the full study's are committed): rerun to continue.

  python studies/progressive_scaling/study.py                 # the full study (hours on 2 cores)
  python studies/progressive_scaling/study.py --quick         # the pipeline check (tiny sizes)

Outputs (--out, default studies/progressive_scaling/results; the quick check defaults to a temporary folder):
  progressive_scaling.png   validation loss vs cumulative training FLOPs: both baselines at their best
                            learning rate and every growth arm (seed 0)
  progressive_scaling.csv   per run: arm, lr, seed, final validation loss, total FLOPs, the FLOPs at
                            which it first reaches the strongest baseline's final loss divided by that
                            baseline's FLOPs (ratio_to_best_baseline; empty: never) and the same against
                            the from-scratch TokenFormer (ratio_to_scratch), its training seconds as its
                            goodput records hold them, and whether this call found it recorded (reused)
  progressive_scaling.md    the same as Markdown tables (the learning-rate sweep, then the arms)
  progressive_study_runs/   one record per finished run (its curve and training seconds)
FLOPs per step = train_flops_per_token(model of that stage) × batch × sequence (tokenformer_jax/flops).
"""
import argparse
import os
import tempfile

from tokenformer_jax import config as config_lib

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENT = os.path.join(HERE, 'experiment.py')
experiment = config_lib.experiment_module(EXPERIMENT)
study_runs = config_lib.experiment_beside(__file__, '../study_runs.py')
growth_study = config_lib.experiment_beside(__file__, '../growth_study.py')
BASELINES = experiment.BASELINES


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
                     else os.path.join(HERE, 'results'))
  work = args.workdir or os.path.join(out if args.quick else tempfile.gettempdir(),
                                      'progressive_study_quick' if args.quick else 'progressive_study')
  os.makedirs(out, exist_ok=True)
  arms = experiment.GROWTH_ARMS
  if args.arms:
    unknown = set(args.arms.split(',')) - set(arms)
    if unknown:
      study_runs.fail(f'unknown growth arms {sorted(unknown)}; choose from {arms}')
    arms = [a for a in arms if a in args.arms.split(',')]
  try:
    lrs = ([float(v) for v in args.lrs.split(',')] if args.lrs else
           experiment.QUICK['lrs'] if args.quick else experiment.LRS)
  except ValueError:
    study_runs.fail(f'--lrs wants comma-separated numbers, got {args.lrs!r}')
  if args.seeds < 1:
    study_runs.fail(f'--seeds must be at least 1, got {args.seeds}')

  records = os.path.join(out, 'progressive_study_runs')
  study = growth_study.Study(study_runs.Runs(EXPERIMENT, experiment, work, records, args.quick))
  best = {arm: study.best_lr(arm, lrs) for arm in BASELINES}        # 1: tune both baselines
  for arm in arms:                                                   # 2: growth at scratch's best
    study.run(arm, best['scratch'], 0)
  best_arm = min(arms, key=lambda a: study.rows[(a, best['scratch'], 0)]['final_val_loss'], default=None)
  for seed in range(1, args.seeds):                                  # 3: the noise between seeds
    for arm in BASELINES + ((best_arm,) if best_arm else ()):
      study.run(arm, best.get(arm, best['scratch']), seed)

  strongest, target = study.add_ratios(BASELINES, best)
  growth_study.write_csv(list(study.rows.values()), os.path.join(out, 'progressive_scaling.csv'))
  shown = [key for key in study.rows if key[0] not in BASELINES or key[1] == best[key[0]]]
  lines = growth_study.sweep_table(study, BASELINES, lrs, best)
  lines += ['', f'Strongest baseline: {strongest} (lr {best[strongest]:g}), final val loss {target:.4f}.', '']
  lines += growth_study.runs_table(study, shown)
  table = '\n'.join(lines)
  with open(os.path.join(out, 'progressive_scaling.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  curves = {f'{key[0]} (lr {key[1]:g})': study.curves[key] for key in shown if key[2] == 0}
  growth_study.plot(curves, target, os.path.join(out, 'progressive_scaling.png'),
                    'TokenFormer growth vs tuned baselines' + (' (quick check)' if args.quick else ''),
                    bold={f'{arm} (lr {best[arm]:g})' for arm in BASELINES})
  print(table)
  print(f'figure and tables in {out}')


if __name__ == '__main__':
  main()
