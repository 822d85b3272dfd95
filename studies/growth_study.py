"""What the growth studies (studies/progressive_scaling/study.py, studies/grow_dims/study.py) share: their
runs by (arm, learning rate, seed), the FLOPs at which each first reaches the strongest baseline's final
loss, and the CSV, Markdown tables and figure of them. Loaded by path, as the drivers load
studies/study_runs.py: `growth_study = config.experiment_beside(__file__, '../growth_study.py')`."""
import concurrent.futures
import csv

from tokenformer_jax import config as config_lib

study_runs = config_lib.experiment_beside(__file__, 'study_runs.py')


def _name(arm: str, lr: float, seed: int) -> str:
  return f'{arm}-lr{lr:g}-seed{seed}'


class Study:
  """The runs of a study by (arm, learning rate, seed), each trained (or found recorded) once, through
  `runs` (a study_runs.Runs). `curves` holds each run's (FLOPs, loss) points, `rows` its table row."""

  def __init__(self, runs):
    self.runs, self.curves, self.rows = runs, {}, {}

  def run(self, arm: str, lr: float, seed: int) -> dict:
    key = (arm, lr, seed)
    if key not in self.rows:
      record = self.runs.run(arm, study_runs.lr_and_seed(lr, seed), _name(arm, lr, seed))
      self.curves[key] = record['curve']
      self.rows[key] = {'arm': arm, 'lr': lr, 'seed': seed, **{
          k: record[k] for k in ('final_val_loss', 'total_gflop', 'train_s', 'reused')}}
    return self.rows[key]

  def run_all(self, keys, jobs: int = 1) -> None:
    """Trains the runs of `keys` (arm, lr, seed) not yet in the study, up to `jobs` at a time (each in
    its own workdir), then adds them in the order given, so the tables do not depend on which finished
    first."""
    todo = [key for key in dict.fromkeys(keys) if key not in self.rows]
    while jobs > 1 and todo and not self.runs.data_prepared():   # the first to train prepares it alone
      self.run(*todo.pop(0))
    if jobs > 1 and len(todo) > 1:
      with concurrent.futures.ThreadPoolExecutor(jobs) as pool:   # each a subprocess: no GIL contention
        list(pool.map(lambda key: self.runs.run(key[0], study_runs.lr_and_seed(*key[1:]), _name(*key)),
                      todo))
    for key in todo:
      self.run(*key)

  def best_lr(self, arm: str, lrs) -> float:
    return min(lrs, key=lambda lr: self.run(arm, lr, 0)['final_val_loss'])

  def add_ratios(self, baselines: tuple, best: dict, scratch: str = 'scratch') -> tuple[str, float]:
    """Adds to every row the FLOPs at which it first reaches the strongest baseline's final loss, over
    that baseline's FLOPs (and the same against `scratch`); returns the strongest baseline and its loss.
    The targets come from the curves, not the rounded final_val_loss: a baseline reaches its own."""
    strongest = min(baselines, key=lambda arm: self.rows[(arm, best[arm], 0)]['final_val_loss'])
    target = self.curves[(strongest, best[strongest], 0)][-1][1]
    target_flops = self.rows[(strongest, best[strongest], 0)]['total_gflop'] * 1e9
    scratch_target = self.curves[(scratch, best[scratch], 0)][-1][1]
    scratch_flops = self.rows[(scratch, best[scratch], 0)]['total_gflop'] * 1e9
    for key, row in self.rows.items():
      reach = study_runs.flops_to_reach(self.curves[key], target)
      reach_scratch = study_runs.flops_to_reach(self.curves[key], scratch_target)
      row.update(gflop_to_best_baseline=None if reach is None else round(reach / 1e9, 1),
                 ratio_to_best_baseline=None if reach is None else round(reach / target_flops, 3),
                 ratio_to_scratch=None if reach_scratch is None else round(reach_scratch / scratch_flops, 3))
    return strongest, target


def write_csv(rows: list[dict], path: str) -> None:
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _cell(value, fmt) -> str:
  return 'not reached' if value is None else format(value, fmt)


def sweep_table(study: Study, baselines: tuple, lrs, best: dict) -> list[str]:
  """The baselines' learning-rate sweep (seed 0, final validation loss; the best in bold)."""
  lines = ['| baseline | ' + ' | '.join(f'lr {lr:g}' for lr in lrs) + ' |', '|---|' + '---|' * len(lrs)]
  for arm in baselines:
    cells = [f"{study.rows[(arm, lr, 0)]['final_val_loss']:.4f}" for lr in lrs]
    cells = [f'**{c}**' if lr == best[arm] else c for c, lr in zip(cells, lrs)]
    lines.append(f'| {arm} | ' + ' | '.join(cells) + ' |')
  return lines


def runs_table(study: Study, keys, extra: dict | None = None) -> list[str]:
  """One row per run in `keys`; `extra` maps a column name to a function of the row (placed after seed)."""
  extra = extra or {}
  lines = ['| arm | lr | seed | ' + ''.join(f'{name} | ' for name in extra) +
           'final val loss | total GFLOP | ratio to best baseline | ratio to scratch | train s |',
           '|---|---|---|' + '---|' * len(extra) + '---|---|---|---|---|']
  for key in keys:
    row = study.rows[key]
    lines.append(f"| {row['arm']} | {row['lr']:g} | {row['seed']} | " +
                 ''.join(f'{cell(row)} | ' for cell in extra.values()) +
                 f"{row['final_val_loss']:.4f} | {row['total_gflop']:,.0f} | "
                 f"{_cell(row['ratio_to_best_baseline'], '.3f')} | {_cell(row['ratio_to_scratch'], '.3f')} | "
                 f"{row['train_s']:.0f} |")
  return lines


def plot(curves: dict, target: float, path: str, title: str, bold=()) -> None:
  """Validation loss against cumulative training FLOPs, one line per label (those in `bold` thicker),
  with the strongest baseline's final loss as a dotted line."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 5))
  ax.set_prop_cycle(color=plt.cm.tab20.colors)   # more lines than the default cycle's 10 colors
  for label, curve in curves.items():
    xs, ys = zip(*curve)
    ax.plot(xs, ys, marker='.', label=label, linewidth=2 if label in bold else 1)
  ax.axhline(target, color='gray', linestyle=':', linewidth=1, label='strongest baseline, final')
  ax.set_xscale('log')
  ax.set_xlabel('cumulative training FLOPs')
  ax.set_ylabel('validation loss (nats/token)')
  ax.set_title(title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
