"""Which dimension is cheapest to grow in, at CPU scale, in one command (studies/grow_dims/experiment.py):
tunes the learning rate of both from-scratch baselines at the final size (TokenFormer and the dense
Transformer of equal non-embedding parameters), runs every growth arm at its kind's best rate (the
TokenFormer arms at the from-scratch TokenFormer's, the dense ones at the dense baseline's), then, in
this order, as far as the flags allow: more seeds of the best arm (--seeds); the Adam state carried
instead of reset for the best --tune-optimizer arms (best: the lowest final loss among the arms that end
at the baselines' size, which all but dense-width do); the other learning rates for the best --tune-lr
arms; more seeds of the strongest baseline (--baseline-seeds). Every run is resumable in its own workdir
and each finished one is kept as a record (studies/study_runs.py; the full study's are committed): rerun
to continue, or with smaller flags to write the outputs from what is recorded.

  python studies/grow_dims/study.py            # the full study (hours on 2 cores)
  python studies/grow_dims/study.py --quick    # the pipeline check (tiny sizes)

Outputs (--out, default studies/grow_dims/results; the quick check defaults to a temporary folder):
  grow_dims.png     validation loss vs cumulative training FLOPs: both baselines at their best learning
                    rate and every growth run of seed 0
  grow_dims.csv     per run: arm, lr, seed, final non-embedding parameters, final validation loss, total
                    FLOPs, the FLOPs at which it first reaches the strongest baseline's final loss over that
                    baseline's FLOPs (ratio_to_best_baseline; empty: never), the same against the
                    from-scratch TokenFormer (ratio_to_scratch), its training seconds, whether reused
  grow_dims.md      the same as Markdown tables (the learning-rate sweep, then the arms)
  grow_dims_runs/   one record per finished run (its curve and training seconds)
"""
import argparse
import os
import tempfile

from tokenformer_jax import config as config_lib
from tokenformer_jax.model import transformer as model_lib

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENT = os.path.join(HERE, 'experiment.py')
experiment = config_lib.experiment_module(EXPERIMENT)
study_runs = config_lib.experiment_beside(__file__, '../study_runs.py')
growth_study = config_lib.experiment_beside(__file__, '../growth_study.py')
BASELINES = experiment.BASELINES
GROWTH_ARMS = ('tokens', 'depth', 'width', 'all', 'dense-depth', 'dense-width')
LRS = (1e-3, 3e-3, 1e-2)
QUICK_LRS = (3e-3, 1e-2)


def _args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes: checks the pipeline')
  parser.add_argument('--out', default=None, help='where the figure and tables go')
  parser.add_argument('--workdir', default=None, help='where the runs go (resumable)')
  parser.add_argument('--arms', default=None, help=f'comma-separated subset of {GROWTH_ARMS} (default: '
                      'all; both baselines always run)')
  parser.add_argument('--lrs', default=None, help='the baselines\' learning rates (comma-separated; '
                      f'default: {LRS}, quick: {QUICK_LRS})')
  parser.add_argument('--seeds', type=int, default=2, help='seeds of the best growth arm')
  parser.add_argument('--tune-optimizer', type=int, default=2,
                      help='how many of the best arms also run with the Adam state carried')
  parser.add_argument('--tune-lr', type=int, default=1,
                      help='how many of the best arms also run at the baselines\' other learning rates')
  parser.add_argument('--baseline-seeds', type=int, default=2, help='seeds of the strongest baseline')
  parser.add_argument('--jobs', type=int, default=1, help='runs trained at a time (each step\'s runs are '
                      'independent; on 2 cores 2 share them better than 1 uses them)')
  args = parser.parse_args()
  if args.arms:
    unknown = set(args.arms.split(',')) - set(GROWTH_ARMS)
    if unknown:
      study_runs.fail(f'unknown growth arms {sorted(unknown)}; choose from {GROWTH_ARMS}')
  args.arms = [a for a in GROWTH_ARMS if not args.arms or a in args.arms.split(',')]
  try:
    args.lrs = [float(v) for v in args.lrs.split(',')] if args.lrs else QUICK_LRS if args.quick else LRS
  except ValueError:
    study_runs.fail(f'--lrs wants comma-separated numbers, got {args.lrs!r}')
  for flag, least in (('seeds', 1), ('baseline_seeds', 1), ('tune_optimizer', 0), ('tune_lr', 0), ('jobs', 1)):
    if getattr(args, flag) < least:
      study_runs.fail(f'--{flag.replace("_", "-")} must be at least {least}, got {getattr(args, flag)}')
  return args


def _kind(arm: str) -> str:
  return 'dense' if arm.startswith('dense') else 'scratch'


def run_study(study, args) -> tuple[dict, str]:
  """Trains (or finds recorded) the runs in priority order, each step's runs --jobs at a time; returns
  the baselines' best rates and the best growth arm of the baselines' size."""
  study.run_all([(arm, lr, 0) for arm in BASELINES for lr in args.lrs], args.jobs)   # 1: tune the baselines
  best = {arm: study.best_lr(arm, args.lrs) for arm in BASELINES}
  study.run_all([(arm, best[_kind(arm)], 0) for arm in args.arms], args.jobs)       # 2: every arm
  # the best arms among those that end at the baselines' size (dense-width ends at 8×: not a comparison
  # at equal parameters)
  size = final_params('scratch', args.quick)
  equal = [a for a in args.arms if abs(final_params(a, args.quick) - size) <= 0.01 * size] or args.arms
  ranked = sorted(equal, key=lambda a: study.rows[(a, best[_kind(a)], 0)]['final_val_loss'])
  strongest = min(BASELINES, key=lambda arm: study.rows[(arm, best[arm], 0)]['final_val_loss'])
  study.run_all(
      [(ranked[0], best[_kind(ranked[0])], seed) for seed in range(1, args.seeds)] +       # 3: its noise
      [(arm + '-carry', best[_kind(arm)], 0) for arm in ranked[:args.tune_optimizer]] +   # 4: carry
      [(arm, lr, 0) for arm in ranked[:args.tune_lr] for lr in args.lrs] +                # 5: other rates
      [(strongest, best[strongest], seed) for seed in range(1, args.baseline_seeds)],     # 6: its noise
      args.jobs)
  return best, ranked[0]


def final_params(arm: str, quick: bool) -> int:
  return model_lib.nonembedding_params(experiment.get_config(arm + '-quick' * quick).model)


def main():
  args = _args()
  out = args.out or (tempfile.mkdtemp(prefix='study_') if args.quick else os.path.join(HERE, 'results'))
  work = args.workdir or os.path.join(out if args.quick else tempfile.gettempdir(),
                                      'grow_dims_quick' if args.quick else 'grow_dims_study')
  os.makedirs(out, exist_ok=True)
  study = growth_study.Study(study_runs.Runs(EXPERIMENT, experiment, work,
                                             os.path.join(out, 'grow_dims_runs'), args.quick))
  best, best_arm = run_study(study, args)
  strongest, target = study.add_ratios(BASELINES, best)
  params = {arm: final_params(arm, args.quick) for arm in {key[0] for key in study.rows}}
  for row in study.rows.values():
    row['nonembedding_params'] = params[row['arm']]
  growth_study.write_csv(list(study.rows.values()), os.path.join(out, 'grow_dims.csv'))

  shown = [key for key in study.rows if key[0] not in BASELINES or key[1] == best[key[0]]]
  lines = growth_study.sweep_table(study, BASELINES, args.lrs, best)
  lines += ['', f'Strongest baseline: {strongest} (lr {best[strongest]:g}), final val loss {target:.4f}. '
            f'Best growth arm of the baselines\' size (seed 0, at its kind\'s best rate): {best_arm}.', '']
  lines += growth_study.runs_table(study, shown, {
      'params': lambda row: f"{row['nonembedding_params'] / 1e6:.2f}M"})
  table = '\n'.join(lines)
  with open(os.path.join(out, 'grow_dims.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  curves = {f'{arm} (lr {lr:g})': study.curves[(arm, lr, seed)] for arm, lr, seed in shown if seed == 0}
  growth_study.plot(curves, target, os.path.join(out, 'grow_dims.png'),
                    'Growing in tokens, depth or width vs tuned baselines' + (' (quick check)' * args.quick),
                    bold={f'{arm} (lr {best[arm]:g})' for arm in BASELINES})
  print(table)
  print(f'figure and tables in {out}')


if __name__ == '__main__':
  main()
