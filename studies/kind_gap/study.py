"""How far TokenFormer trails the dense Transformer of equal non-embedding parameters, each at its best
learning rate, at three sizes (studies/kind_gap/experiment.py), and what explains it. Per size, smallest
first: both kinds tuned (three learning rates: LRS at the smallest, then the size below's tuned rate and
its neighbours; extended along the half-decade ladder while an edge wins); at the smallest, the
suspects (ABLATIONS) at the tuned rates; the one that closes the gap most, carried to every size with
its rate tuned again; a second seed of both kinds at their tuned rates, with and without it; then, at
the sizes above the smallest (largest first), a longer budget: --longer times the steps (4: 2,400, the
4× size's proportional budget and a quarter of the 16× size's), both kinds with the carried suspect,
tuned from the 600-step rate and the one below it (longer runs favour lower rates; the one above lost at
600 steps), extended downward while the lower edge wins. Each finished run is kept as a record
(studies/study_runs.py; the full study's are committed): rerun to continue.

  python studies/kind_gap/study.py                    # every size (about 4.5 h on 2 cores, most at 16×)
  python studies/kind_gap/study.py --scales=1,4       # the smaller sizes only
  python studies/kind_gap/study.py --quick            # the pipeline check (tiny sizes)

Outputs (--out, default studies/kind_gap/results; the quick check defaults to a temporary folder):
  kind_gap.png     the gap (TokenFormer − dense final validation loss) against non-embedding parameters,
                   and both kinds' best losses
  kind_gap.csv     per run: kind, scale, non-embedding parameters, steps, lr, the ablation, seed, final
                   validation loss, total FLOPs, training seconds, whether this call found it recorded,
                   the lowest validation loss of the run
  kind_gap.md      the learning-rate sweeps, the gap by size, the ablations, the longer budget
  kind_gap_runs/   one record per finished run
"""
import argparse
import csv
import os
import tempfile

from tokenformer_jax import config as config_lib

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENT = os.path.join(HERE, 'experiment.py')
experiment = config_lib.experiment_module(EXPERIMENT)
study_runs = config_lib.experiment_beside(__file__, '../study_runs.py')
# suspects for the gap, tried at the smallest size at each kind's tuned learning rate: the init of the
# value tokens (reference: 2 / (L·√d); the dense model's output projections use the same std, so those
# run for both kinds), of the key tokens (the L2 norm makes the forward pass blind to their scale, not
# Adam's steps relative to it), and a 4× longer warmup (for both kinds, so it cannot favour one). The
# one that closes the gap most is then carried to every size, its learning rate tuned again.
BOTH, TOKENFORMER = experiment.KINDS, ('tokenformer',)
ABLATIONS = {
    'value_init_x0.0625': (BOTH, lambda m: {'model.value_init_std': _wang_std(m) / 16}),
    'value_init_x0.25': (BOTH, lambda m: {'model.value_init_std': _wang_std(m) / 4}),
    'value_init_x4': (TOKENFORMER, lambda m: {'model.value_init_std': 4 * _wang_std(m)}),
    'key_init_x5': (TOKENFORMER, lambda m: {'model.key_init_std': 5 * m.key_init_std}),
    'warmup_x4': (BOTH, lambda m: {'optimizer.warmup_frac': 0.2}),
}


def _wang_std(m) -> float:
  return 2 / (m.num_layers * m.d_model ** 0.5)


def _around(lr: float) -> list:
  """lr and its neighbours on the ladder: where a larger size's tuning starts, since the best rate moves
  by about one rung between sizes; tune() still extends past an edge that wins."""
  i = experiment.LR_LADDER.index(lr)
  return list(experiment.LR_LADDER[max(i - 1, 0):i + 2])


def non_embedding_params(m) -> int:
  """Both kinds' projection parameters (equal by construction): L · 2d · (3·n_qkv + n_proj + n_ffn)."""
  return m.num_layers * 2 * m.d_model * (3 * m.n_qkv + m.n_proj + m.n_ffn)


class GapStudy:
  """The runs by (kind, scale, lr, ablation, seed, steps); `best` holds the tuned rate per (kind, scale,
  ablation, steps). steps 0 is the experiment's own budget (experiment.STEPS)."""

  def __init__(self, runs: study_runs.Runs, quick: bool):
    self.runs, self.quick, self.rows, self.best = runs, quick, {}, {}
    self.steps = experiment.QUICK['steps'] if quick else experiment.STEPS

  def config(self, kind: str, scale: int):
    return experiment.get_config(f'{kind}-x{scale}' + ('-quick' if self.quick else ''))

  def run(self, kind: str, scale: int, lr: float, ablation: str = '', seed: int = 0, steps: int = 0) -> dict:
    key = (kind, scale, lr, ablation, seed, steps)
    if key not in self.rows:
      arm = f'{kind}-x{scale}'
      changes = study_runs.lr_and_seed(lr, seed)
      if ablation:
        changes.update(ABLATIONS[ablation][1](self.config(kind, scale).model))
      if steps:
        changes['train.steps'] = steps
      name = (f'{arm}-lr{lr:g}' + (f'-{ablation}' if ablation else '') + (f'-seed{seed}' if seed else '')
              + (f'-steps{steps}' if steps else ''))
      record = self.runs.run(arm, changes, name)
      self.rows[key] = {
          'kind': kind, 'scale': scale,
          'non_embedding_params': non_embedding_params(self.config(kind, scale).model),
          'steps': steps or self.steps, 'lr': lr, 'ablation': ablation, 'seed': seed,
          **{k: record[k] for k in ('final_val_loss', 'total_gflop', 'train_s', 'reused')},
          # many passes over the corpus can overfit: the lowest evaluation shows whether the end is past it
          'lowest_val_loss': round(min(loss for _, loss in record['curve']), 4)}
    return self.rows[key]

  def loss(self, kind: str, scale: int, ablation: str = '', seed: int = 0, steps: int = 0) -> float:
    """The final loss at the tuned rate (the dense model's own when the ablation is not for it)."""
    if kind not in ABLATIONS.get(ablation, (experiment.KINDS,))[0]:
      ablation = ''
    lr = self.best.get((kind, scale, ablation, steps)) or self.best[(kind, scale, '', steps)]
    return self.run(kind, scale, lr, ablation, seed, steps)['final_val_loss']

  def gap(self, scale: int, ablation: str = '', seed: int = 0, steps: int = 0) -> float:
    return (self.loss('tokenformer', scale, ablation, seed, steps)
            - self.loss('dense', scale, ablation, seed, steps))

  def tune(self, kind: str, scale: int, lrs, ablation: str = '', steps: int = 0, upward: bool = True) -> float:
    """The best learning rate: lrs, then one more half-decade past whichever edge wins (only the lower
    one unless `upward`), while one does."""
    ladder, tried = experiment.LR_LADDER, sorted(lrs)
    while True:
      best = min(tried, key=lambda lr: self.run(kind, scale, lr, ablation, 0, steps)['final_val_loss'])
      i = ladder.index(best)
      if best == tried[0] and i > 0:
        tried.insert(0, ladder[i - 1])
      elif upward and best == tried[-1] and i + 1 < len(ladder):
        tried.append(ladder[i + 1])
      else:
        self.best[(kind, scale, ablation, steps)] = best
        return best


def _sweep(study: GapStudy, scale: int, variants, steps: int) -> list[str]:
  """One size's final validation losses by learning rate (seed 0), the tuned rate in bold."""
  budget = steps or study.steps
  lrs = sorted({r['lr'] for r in study.rows.values()
                if r['scale'] == scale and not r['seed'] and r['steps'] == budget})
  lines = [f'| {scale}×{f", {steps:,} steps" if steps else ""} | ' + ' | '.join(f'lr {lr:g}' for lr in lrs)
           + ' |', '|---|' + '---|' * len(lrs)]
  for kind, ablation in variants:
    if (kind, scale, ablation, steps) not in study.best:
      continue
    loss = {r['lr']: r['final_val_loss'] for r in study.rows.values()
            if (r['kind'], r['scale'], r['ablation'], r['seed'], r['steps']) == (kind, scale, ablation, 0, budget)}
    cells = ['' if lr not in loss else f'**{loss[lr]:.4f}**' if lr == study.best[(kind, scale, ablation, steps)]
             else f'{loss[lr]:.4f}' for lr in lrs]
    lines.append(f'| {kind}{" + " + ablation if ablation else ""} | ' + ' | '.join(cells) + ' |')
  return lines + ['']


def _variants(carried: str) -> list:
  variants = [(kind, '') for kind in experiment.KINDS]
  return variants + ([(kind, carried) for kind in ABLATIONS[carried][0]] if carried else [])


def _longer_variants(carried: str) -> list:
  """Each kind with the carried suspect where it applies to that kind, else as it is."""
  return [(kind, carried if carried and kind in ABLATIONS[carried][0] else '') for kind in experiment.KINDS]


def _longer_table(study: GapStudy, scales, carried: str, steps: int) -> list[str]:
  lines = ['', f'Longer budget: {steps:,} steps ({steps // study.steps}× the {study.steps:,}) at the larger sizes'
           + (f', with {carried}' if carried else '') + ', final validation loss by learning rate (seed 0):', '']
  for scale in scales:
    lines += _sweep(study, scale, _longer_variants(carried), steps)
  lines += ['| scale | steps | tokens per non-embedding parameter | tokenformer (lr) | dense (lr) | gap | '
            f'gap at the lowest val losses | gap at {study.steps:,} steps |', '|---|---|---|---|---|---|---|---|']
  for scale in scales:
    tf, dense = (study.run(kind, scale, study.best[(kind, scale, ablation, steps)], ablation, 0, steps)
                 for kind, ablation in _longer_variants(carried))
    c = study.config('tokenformer', scale)
    tokens = steps * c.train.batch_size * c.data.seq_len / tf['non_embedding_params']
    lines.append(f"| {scale}× | {steps:,} | {tokens:.2f} | {tf['final_val_loss']:.4f} ({tf['lr']:g}) | "
                 f"{dense['final_val_loss']:.4f} ({dense['lr']:g}) | {study.gap(scale, carried, 0, steps):+.4f} | "
                 f"{tf['lowest_val_loss'] - dense['lowest_val_loss']:+.4f} | {study.gap(scale, carried):+.4f} |")
  return lines


def _table(study: GapStudy, scales, carried: str, longer_scales=(), longer: int = 0) -> str:
  lines = ['Final validation loss by learning rate (seed 0; the tuned rate in bold):', '']
  for scale in scales:
    lines += _sweep(study, scale, _variants(carried), 0)
  seeds = sorted({r['seed'] for r in study.rows.values()})
  gaps = [('', seed) for seed in seeds[1:]] + [(carried, seed) for seed in seeds if carried]
  lines += ['| scale | non-embedding params | tokenformer (lr) | dense (lr) | gap | '
            + ''.join(('gap' + (f' with {ablation}' if ablation else '') + (f', seed {seed}' if seed else ''))
                      + ' | ' for ablation, seed in gaps) + 'train s (tf, dense) |',
            '|---|' + '---|' * (5 + len(gaps))]
  for scale in scales:
    tf, dense = (study.run(kind, scale, study.best[(kind, scale, '', 0)]) for kind in experiment.KINDS)
    cells = [f'{scale}×', f"{tf['non_embedding_params'] / 1e6:.2f}M",
             f"{tf['final_val_loss']:.4f} ({tf['lr']:g})", f"{dense['final_val_loss']:.4f} ({dense['lr']:g})",
             f'{study.gap(scale):+.4f}']
    cells += [f'{study.gap(scale, ablation, seed):+.4f}' for ablation, seed in gaps]
    cells.append(f"{tf['train_s']:.0f}, {dense['train_s']:.0f}")
    lines.append('| ' + ' | '.join(cells) + ' |')
  ablated = [r for r in study.rows.values() if r['ablation'] and r['scale'] == scales[0] and not r['seed']
             and r['steps'] == study.steps and r['lr'] == study.best[(r['kind'], r['scale'], '', 0)]]
  if ablated:
    lines += ['', f"Ablations at {scales[0]}×, each at its kind's tuned learning rate (change: against the "
              "same kind without it; gap: against dense with it where it applies to dense):", '',
              '| kind | ablation | final val loss | change | gap |', '|---|---|---|---|---|']
    for r in ablated:
      base = study.run(r['kind'], r['scale'], r['lr'])
      other = study.run('dense', r['scale'], study.best[('dense', r['scale'], '', 0)],
                        r['ablation'] if 'dense' in ABLATIONS[r['ablation']][0] else '')
      gap = f"{r['final_val_loss'] - other['final_val_loss']:+.4f}" if r['kind'] == 'tokenformer' else ''
      lines.append(f"| {r['kind']} | {r['ablation']} | {r['final_val_loss']:.4f} | "
                   f"{r['final_val_loss'] - base['final_val_loss']:+.4f} | {gap} |")
  if longer_scales:
    lines += _longer_table(study, sorted(longer_scales), carried, longer)
  return '\n'.join(lines)


def _plot(study: GapStudy, scales, carried: str, path: str, title: str, longer_scales=(),
          longer: int = 0) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, (gap_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
  params = [non_embedding_params(study.config('tokenformer', scale).model) for scale in scales]
  seeds = sorted({r['seed'] for r in study.rows.values()})[1:]
  for ablation in ('', carried) if carried else ('',):
    label = f'with {ablation}' if ablation else 'default init'
    line, = gap_ax.plot(params, [study.gap(scale, ablation) for scale in scales], marker='o', label=label)
    for seed in seeds:                                   # the other seeds as open markers: the noise
      gap_ax.plot(params, [study.gap(scale, ablation, seed) for scale in scales], linestyle='none',
                  marker='o', markerfacecolor='none', color=line.get_color(), label=f'{label}, seed {seed}')
    for kind in experiment.KINDS:
      if not ablation or kind in ABLATIONS[ablation][0]:
        loss_ax.plot(params, [study.loss(kind, scale, ablation) for scale in scales], marker='o',
                     linestyle='--' if ablation else '-', label=f'{kind}, {label}')
  if longer_scales:                                       # the longer budget as squares
    label = f'{longer // study.steps}× steps' + (f', with {carried}' if carried else '')
    longer_scales = sorted(longer_scales)
    longer_params = [non_embedding_params(study.config('tokenformer', scale).model) for scale in longer_scales]
    gap_ax.plot(longer_params, [study.gap(scale, carried, 0, longer) for scale in longer_scales], marker='s',
                linestyle=':', color='black', label=label)
    for kind, ablation in _longer_variants(carried):
      loss_ax.plot(longer_params, [study.loss(kind, scale, ablation, 0, longer) for scale in longer_scales],
                   marker='s', linestyle=':', label=f'{kind}, {label}')
  gap_ax.axhline(0, color='gray', linewidth=1)
  gap_ax.set_ylabel('TokenFormer − dense, final val loss (nats)')
  loss_ax.set_ylabel('final validation loss at the tuned lr (nats/token)')
  for ax in (gap_ax, loss_ax):
    ax.set_xscale('log')
    ax.set_xlabel('non-embedding parameters')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes: checks the pipeline')
  parser.add_argument('--out', default=None, help='where the figure, tables and records go')
  parser.add_argument('--workdir', default=None, help='where the runs go (resumable)')
  parser.add_argument('--scales', default=None, help='comma-separated subset of the sizes')
  parser.add_argument('--ablations', default=','.join(ABLATIONS),
                      help="comma-separated ablations to try at the smallest size ('' for none)")
  parser.add_argument('--seeds', type=int, default=2, help='seeds of both kinds at their tuned rates')
  parser.add_argument('--longer', type=int, default=4,
                      help='the longer budget at the larger sizes, in multiples of the steps (1: none)')
  args = parser.parse_args()
  default_scales = experiment.QUICK['scales'] if args.quick else experiment.SCALES
  try:
    scales = sorted(int(v) for v in args.scales.split(',')) if args.scales else list(default_scales)
  except ValueError:
    study_runs.fail(f'--scales wants comma-separated integers, got {args.scales!r}')
  if not scales or set(scales) - set(default_scales):
    study_runs.fail(f'--scales must be a subset of {default_scales}, got {args.scales!r}')
  ablations = [a for a in args.ablations.split(',') if a]
  if set(ablations) - set(ABLATIONS):
    study_runs.fail(f'unknown ablations {sorted(set(ablations) - set(ABLATIONS))}; choose from {list(ABLATIONS)}')
  if args.seeds < 1:
    study_runs.fail(f'--seeds must be at least 1, got {args.seeds}')
  if args.longer < 1:
    study_runs.fail(f'--longer must be at least 1, got {args.longer}')
  out = args.out or (tempfile.mkdtemp(prefix='kind_gap_') if args.quick
                     else os.path.join(HERE, 'results'))
  work = args.workdir or os.path.join(out if args.quick else tempfile.gettempdir(),
                                      'kind_gap_quick' if args.quick else 'kind_gap')
  os.makedirs(out, exist_ok=True)
  runs = study_runs.Runs(EXPERIMENT, experiment, work, os.path.join(out, 'kind_gap_runs'), args.quick)
  study = GapStudy(runs, args.quick)
  lrs = experiment.QUICK['lrs'] if args.quick else experiment.LRS

  carried = ''
  for i, scale in enumerate(scales):
    for kind in experiment.KINDS:                      # 1: both kinds tuned, from the size below's rate
      study.tune(kind, scale, lrs if i == 0 else _around(study.best[(kind, scales[i - 1], '', 0)]))
    if i == 0:                                           # 2: the suspects, where runs are cheapest
      for ablation in ablations:
        for kind in ABLATIONS[ablation][0]:
          study.run(kind, scale, study.best[(kind, scale, '', 0)], ablation)
      closing = min(ablations, key=lambda a: study.gap(scale, a), default='')
      carried = closing if closing and study.gap(scale, closing) < study.gap(scale) else ''
    if carried:                                          # 3: the best suspect, its rate tuned again
      for kind in ABLATIONS[carried][0]:
        study.tune(kind, scale, [study.best[(kind, scale, '', 0)]], carried)
    for seed in range(1, args.seeds):                    # 4: the noise between seeds
      for ablation in ('', carried) if carried else ('',):
        for kind in ABLATIONS.get(ablation, (experiment.KINDS,))[0]:
          study.run(kind, scale, study.best[(kind, scale, ablation, 0)], ablation, seed)

  longer = args.longer * study.steps if args.longer > 1 else 0
  longer_scales = scales[1:] if longer else []
  for scale in reversed(longer_scales):                  # 5: a longer budget, the largest size first
    for kind, ablation in _longer_variants(carried):
      start = study.best[(kind, scale, ablation, 0)]
      i = experiment.LR_LADDER.index(start)
      study.tune(kind, scale, experiment.LR_LADDER[max(i - 1, 0):i + 1], ablation, longer, upward=False)

  rows = list(study.rows.values())
  with open(os.path.join(out, 'kind_gap.csv'), 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  table = _table(study, scales, carried, longer_scales, longer)
  with open(os.path.join(out, 'kind_gap.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  _plot(study, scales, carried, os.path.join(out, 'kind_gap.png'),
        'TokenFormer vs dense at equal non-embedding parameters' + (' (quick check)' if args.quick else ''),
        longer_scales, longer)
  print(table)
  print(f'figure and tables in {out}')


if __name__ == '__main__':
  main()
