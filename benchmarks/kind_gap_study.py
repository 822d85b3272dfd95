"""How far TokenFormer trails the dense Transformer of equal non-embedding parameters, each at its best
learning rate, at three sizes (experiments/kind_gap_cpu.py), and what a few suspects change at the
smallest: tunes both kinds at every size (three learning rates, extended along the half-decade ladder
while an edge wins), then trains the ablations at size 1 at the tuned rates. Each finished run is kept
as a record (benchmarks/study_runs.py; the full study's are committed): rerun to continue.

  python benchmarks/kind_gap_study.py                    # every size (about 6 h on 2 cores, most at 16×)
  python benchmarks/kind_gap_study.py --scales=1,4       # the smaller sizes only
  python benchmarks/kind_gap_study.py --quick            # the pipeline check (tiny sizes)

Outputs (--out, default experiments/results; the quick check defaults to a temporary folder):
  kind_gap.png     the gap (TokenFormer − dense final validation loss) against non-embedding parameters,
                   and both kinds' best losses
  kind_gap.csv     per run: kind, scale, non-embedding parameters, lr, the ablation, final validation
                   loss, total FLOPs, training seconds, whether this call found it recorded (reused)
  kind_gap.md      the learning-rate sweeps, the gap by size, the ablations
  kind_gap_runs/   one record per finished run
"""
import argparse
import csv
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import study_runs  # noqa: E402
from experiments import kind_gap_cpu  # noqa: E402

EXPERIMENT = os.path.join(ROOT, 'experiments', 'kind_gap_cpu.py')
# suspects for the gap, each tried at size 1 at the kind's tuned learning rate: the value tokens' init
# (reference: 2 / (L·√d)), the key tokens' init (the L2 norm makes the forward pass blind to its scale,
# not Adam's steps relative to it), and a 4× longer warmup (for both kinds, so it cannot favour one)
ABLATIONS = {
    'value_init_x0.25': ('tokenformer', lambda m: {'model.value_init_std': 0.25 * _wang_std(m)}),
    'value_init_x4': ('tokenformer', lambda m: {'model.value_init_std': 4 * _wang_std(m)}),
    'key_init_x5': ('tokenformer', lambda m: {'model.key_init_std': 5 * m.key_init_std}),
    'warmup_x4': ('both', lambda m: {'optimizer.warmup_frac': 0.2}),
}


def _wang_std(m) -> float:
  return 2 / (m.num_layers * m.d_model ** 0.5)


def non_embedding_params(m) -> int:
  """Both kinds' projection parameters (equal by construction): L · 2d · (3·n_qkv + n_proj + n_ffn)."""
  return m.num_layers * 2 * m.d_model * (3 * m.n_qkv + m.n_proj + m.n_ffn)


class GapStudy:
  def __init__(self, runs: study_runs.Runs, quick: bool):
    self.runs, self.quick, self.rows = runs, quick, []

  def config(self, kind: str, scale: int):
    return kind_gap_cpu.get_config(f'{kind}-x{scale}' + ('-quick' if self.quick else ''))

  def run(self, kind: str, scale: int, lr: float, ablation: str = '') -> dict:
    arm = f'{kind}-x{scale}'
    changes = study_runs.lr_and_seed(lr, 0)
    if ablation:
      changes.update(ABLATIONS[ablation][1](self.config(kind, scale).model))
    record = self.runs.run(arm, changes, f'{arm}-lr{lr:g}' + (f'-{ablation}' if ablation else ''))
    row = {'kind': kind, 'scale': scale,
           'non_embedding_params': non_embedding_params(self.config(kind, scale).model), 'lr': lr,
           'ablation': ablation, **{k: record[k] for k in ('final_val_loss', 'total_gflop', 'train_s',
                                                            'reused')}}
    if row not in self.rows:
      self.rows.append(row)
    return row

  def tune(self, kind: str, scale: int, lrs) -> float:
    """The best learning rate: lrs, then one more half-decade past whichever edge wins, while one does."""
    ladder, tried = kind_gap_cpu.LR_LADDER, sorted(lrs)
    while True:
      best = min(tried, key=lambda lr: self.run(kind, scale, lr)['final_val_loss'])
      i = ladder.index(best)
      if best == tried[0] and i > 0:
        tried.insert(0, ladder[i - 1])
      elif best == tried[-1] and i + 1 < len(ladder):
        tried.append(ladder[i + 1])
      else:
        return best


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _table(study: GapStudy, best: dict, scales) -> str:
  lines = ['Final validation loss by learning rate (best in bold):', '']
  for scale in scales:
    lrs = sorted({r['lr'] for r in study.rows if r['scale'] == scale and not r['ablation']})
    lines += [f'| {scale}× | ' + ' | '.join(f'lr {lr:g}' for lr in lrs) + ' |', '|---|' + '---|' * len(lrs)]
    for kind in kind_gap_cpu.KINDS:
      loss = {r['lr']: r['final_val_loss'] for r in study.rows
              if (r['kind'], r['scale'], r['ablation']) == (kind, scale, '')}
      cells = ['' if lr not in loss else f'**{loss[lr]:.4f}**' if lr == best[(kind, scale)]
               else f'{loss[lr]:.4f}' for lr in lrs]
      lines.append(f'| {kind} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  lines += ['| scale | non-embedding params | tokenformer (lr) | dense (lr) | gap | train s (tf, dense) |',
            '|---|---|---|---|---|---|']
  for scale in scales:
    tf, dense = (next(r for r in study.rows if (r['kind'], r['scale'], r['lr'], r['ablation']) ==
                      (kind, scale, best[(kind, scale)], '')) for kind in kind_gap_cpu.KINDS)
    lines.append(f"| {scale}× | {tf['non_embedding_params'] / 1e6:.2f}M | {tf['final_val_loss']:.4f} "
                 f"({tf['lr']:g}) | {dense['final_val_loss']:.4f} ({dense['lr']:g}) | "
                 f"{tf['final_val_loss'] - dense['final_val_loss']:+.4f} | {tf['train_s']:.0f}, "
                 f"{dense['train_s']:.0f} |")
  ablated = [r for r in study.rows if r['ablation']]
  if ablated:
    lines += ['', f'Ablations at {scales[0]}×, each at its kind\'s tuned learning rate:', '',
              '| kind | ablation | final val loss | change |', '|---|---|---|---|']
    for r in ablated:
      base = next(b for b in study.rows if (b['kind'], b['scale'], b['lr'], b['ablation']) ==
                  (r['kind'], r['scale'], r['lr'], ''))
      lines.append(f"| {r['kind']} | {r['ablation']} | {r['final_val_loss']:.4f} | "
                   f"{r['final_val_loss'] - base['final_val_loss']:+.4f} |")
  return '\n'.join(lines)


def _plot(study: GapStudy, best: dict, scales, path: str, title: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, (gap_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
  points = {kind: [next((r['non_embedding_params'], r['final_val_loss']) for r in study.rows
                        if (r['kind'], r['scale'], r['lr'], r['ablation']) ==
                        (kind, scale, best[(kind, scale)], '')) for scale in scales]
            for kind in kind_gap_cpu.KINDS}
  params = [p for p, _ in points['tokenformer']]
  gaps = [tf - dense for (_, tf), (_, dense) in zip(points['tokenformer'], points['dense'])]
  gap_ax.plot(params, gaps, marker='o')
  gap_ax.axhline(0, color='gray', linewidth=1)
  gap_ax.set_ylabel('TokenFormer − dense, final val loss (nats)')
  for kind, kind_points in points.items():
    loss_ax.plot(*zip(*kind_points), marker='o', label=f'{kind} (best lr)')
  loss_ax.set_ylabel('final validation loss (nats/token)')
  loss_ax.legend(fontsize=8)
  for ax in (gap_ax, loss_ax):
    ax.set_xscale('log')
    ax.set_xlabel('non-embedding parameters')
    ax.grid(True, which='both', alpha=0.3)
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
  args = parser.parse_args()
  default_scales = kind_gap_cpu.QUICK['scales'] if args.quick else kind_gap_cpu.SCALES
  try:
    scales = sorted(int(v) for v in args.scales.split(',')) if args.scales else list(default_scales)
  except ValueError:
    _fail(f'--scales wants comma-separated integers, got {args.scales!r}')
  if not scales or set(scales) - set(default_scales):
    _fail(f'--scales must be a subset of {default_scales}, got {args.scales!r}')
  ablations = [a for a in args.ablations.split(',') if a]
  if set(ablations) - set(ABLATIONS):
    _fail(f'unknown ablations {sorted(set(ablations) - set(ABLATIONS))}; choose from {list(ABLATIONS)}')
  out = args.out or (tempfile.mkdtemp(prefix='kind_gap_') if args.quick
                     else os.path.join(ROOT, 'experiments', 'results'))
  work = args.workdir or os.path.join(out if args.quick else tempfile.gettempdir(),
                                      'kind_gap_quick' if args.quick else 'kind_gap')
  os.makedirs(out, exist_ok=True)
  runs = study_runs.Runs(EXPERIMENT, kind_gap_cpu, work, os.path.join(out, 'kind_gap_runs'), args.quick)
  study = GapStudy(runs, args.quick)
  lrs = kind_gap_cpu.QUICK['lrs'] if args.quick else kind_gap_cpu.LRS

  best = {}
  for i, scale in enumerate(scales):
    for kind in kind_gap_cpu.KINDS:
      best[(kind, scale)] = study.tune(kind, scale, lrs)
    if i == 0:   # the suspects, where runs are cheapest
      for ablation in ablations:
        which = ABLATIONS[ablation][0]
        for kind in kind_gap_cpu.KINDS if which == 'both' else (which,):
          study.run(kind, scale, best[(kind, scale)], ablation)

  with open(os.path.join(out, 'kind_gap.csv'), 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=list(study.rows[0]))
    writer.writeheader()
    writer.writerows(study.rows)
  table = _table(study, best, scales)
  with open(os.path.join(out, 'kind_gap.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  _plot(study, best, scales, os.path.join(out, 'kind_gap.png'),
        'TokenFormer vs dense at equal non-embedding parameters' + (' (quick check)' if args.quick else ''))
  print(table)
  print(f'figure and tables in {out}')


if __name__ == '__main__':
  main()
