"""The kind-gap study's --quick variant, its training stood in for (fake_training.py: the driver's logic,
not the numbers, which come from the full run committed under studies/kind_gap/results/): both kinds tuned
at two sizes (extending past an edge that wins), an ablation at the smaller size at the tuned rates, the
longer budget at the larger size, the figure and tables written."""
import csv
import subprocess
import sys

import pytest

from tests.helpers import ROOT, script_module
from tests.studies import fake_training
from tokenformer_jax.config import experiment_module

pytestmark = pytest.mark.study
STUDY = f'{ROOT}/studies/kind_gap/study.py'
kind_gap_study = script_module('studies/kind_gap/study.py')
kind_gap_cpu = experiment_module(f'{ROOT}/studies/kind_gap/experiment.py')
tiny = experiment_module(f'{ROOT}/experiments/tiny.py')


def _study(out, *flags):
  return subprocess.run([sys.executable, STUDY, '--quick', f'--out={out}',
                         f'--workdir={out / "work"}', *flags],
                        cwd=out, capture_output=True, text=True, timeout=300)


STEPS = kind_gap_cpu.QUICK['steps']


def _swept(rows, kind, scale, ablation, steps=STEPS):
  return {float(r['lr']): float(r['final_val_loss']) for r in rows
          if (r['kind'], r['scale'], r['ablation'], r['seed'], r['steps']) == (kind, str(scale), ablation, '0',
                                                                             str(steps))}


def _check_tuned(swept, start):
  """The sweep began at `start` and went one half-decade past an edge while that edge won."""
  ladder = kind_gap_cpu.LR_LADDER
  lrs = sorted(swept)
  assert set(start) <= set(swept) and lrs == [lr for lr in ladder if lrs[0] <= lr <= lrs[-1]]
  best = min(swept, key=swept.get)
  assert lrs[0] < best < lrs[-1] or best in (ladder[0], ladder[-1]), swept
  return best


def test_quick_study(tmp_path, monkeypatch):
  fake_training.install(monkeypatch, kind_gap_study.study_runs)
  monkeypatch.setattr(sys, 'argv', [STUDY, '--quick', f'--out={tmp_path}', f'--workdir={tmp_path / "work"}',
                                    '--ablations=warmup_x4'])
  kind_gap_study.main()
  with open(tmp_path / 'kind_gap.csv') as f:
    rows = list(csv.DictReader(f))
  scales = kind_gap_cpu.QUICK['scales']
  # the smallest size's sweep starts at the quick rates, a larger one's around the size below's best
  best = {}
  for scale in scales:
    for kind in kind_gap_cpu.KINDS:
      below = [s for s in scales if s < scale]
      start = kind_gap_study._around(best[(kind, below[-1])]) if below else kind_gap_cpu.QUICK['lrs']
      best[(kind, scale)] = _check_tuned(_swept(rows, kind, scale, ''), start)
  # both kinds have equal non-embedding parameters and FLOPs at each size; 4x the parameters at 4x
  sizes = {(r['kind'], r['scale']): (int(r['non_embedding_params']), float(r['total_gflop'])) for r in rows
           if r['steps'] == str(STEPS)}
  for scale in scales:
    assert sizes[('tokenformer', str(scale))] == sizes[('dense', str(scale))]
  assert sizes[('dense', '4')][0] == 4 * sizes[('dense', '1')][0]
  # the suspect ran for both kinds at the smaller size at each kind's tuned rate ...
  for kind in kind_gap_cpu.KINDS:
    assert best[(kind, 1)] in _swept(rows, kind, 1, 'warmup_x4')
  # ... and, if it closed the gap there, was carried to the larger size with its rate tuned again
  def gap(scale, ablation):
    return (min(_swept(rows, 'tokenformer', scale, ablation).values())
            - min(_swept(rows, 'dense', scale, ablation).values()))
  carried = gap(1, 'warmup_x4') < best_gap(rows, best, 1)
  for kind in kind_gap_cpu.KINDS:
    swept = _swept(rows, kind, 4, 'warmup_x4')
    assert bool(swept) == carried
    if carried:
      _check_tuned(swept, [best[(kind, 4)]])
  # a second seed of both kinds at their tuned rates, at every size, with the carried suspect too
  def tuned(kind, scale, ablation):
    swept = _swept(rows, kind, scale, ablation)
    return min(swept, key=swept.get)
  variants = [''] + ['warmup_x4'] * carried
  seeded = [(r['kind'], r['scale'], r['ablation'], float(r['lr'])) for r in rows if r['seed'] == '1']
  assert sorted(seeded) == sorted(
      (kind, str(scale), ablation, tuned(kind, scale, ablation))
      for kind in kind_gap_cpu.KINDS for scale in scales for ablation in variants)
  # the longer budget (4x the steps, the default) at the larger size only, both kinds with the carried
  # suspect, tuned from the short budget's rate and the one below, extended downward while that edge wins
  longer = [r for r in rows if r['steps'] != str(STEPS)]
  assert {(r['scale'], r['steps'], r['ablation'], r['seed']) for r in longer} == {
      ('4', str(4 * STEPS), 'warmup_x4' if carried else '', '0')}
  ladder = kind_gap_cpu.LR_LADDER
  for kind in kind_gap_cpu.KINDS:
    short = _swept(rows, kind, 4, 'warmup_x4' if carried else '')
    swept = _swept(rows, kind, 4, 'warmup_x4' if carried else '', 4 * STEPS)
    lrs, start = sorted(swept), min(short, key=short.get)
    assert lrs[-1] == start and ladder[ladder.index(start) - 1] in swept
    assert lrs == [lr for lr in ladder if lrs[0] <= lr <= start]
    assert min(swept, key=swept.get) != lrs[0] or lrs[0] == ladder[0], swept   # the lower edge lost
    # 4x the steps, 4x the FLOPs
    assert float(next(iter(r['total_gflop'] for r in longer if r['kind'] == kind))) == pytest.approx(
        4 * sizes[(kind, '4')][1], rel=1e-3)
  assert all(r['reused'] == 'False' and float(r['train_s']) > 0 for r in rows)
  assert all(float(r['lowest_val_loss']) <= float(r['final_val_loss']) for r in rows)
  table = (tmp_path / 'kind_gap.md').read_text()
  assert '| 4× |' in table and '| dense | warmup_x4 |' in table and 'gap, seed 1' in table
  assert ('gap with warmup_x4, seed 1' in table) == carried
  assert table.count('| dense | warmup_x4 |') == 1                  # the suspects' table: seed 0 only
  assert f'Longer budget: {4 * STEPS} steps' in table and f'| 4×, {4 * STEPS} steps |' in table
  assert '| gap at the lowest val losses |' in table
  assert (tmp_path / 'kind_gap.png').stat().st_size > 10_000
  assert len(list((tmp_path / 'kind_gap_runs').iterdir())) == len(rows)


def best_gap(rows, best, scale):
  loss = {(r['kind'], float(r['lr'])): float(r['final_val_loss']) for r in rows
          if (r['scale'], r['ablation'], r['seed'], r['steps']) == (str(scale), '', '0', str(STEPS))}
  return loss[('tokenformer', best[('tokenformer', scale)])] - loss[('dense', best[('dense', scale)])]


def test_bad_flags_are_one_line_errors(tmp_path, monkeypatch, capsys):
  for flag in ('--scales=1,8', '--scales=one', '--ablations=warmup_x4,louder', '--seeds=0'):
    monkeypatch.setattr(sys, 'argv', [STUDY, '--quick', f'--out={tmp_path}', f'--workdir={tmp_path / "work"}',
                                      flag])
    with pytest.raises(SystemExit) as exit_:
      kind_gap_study.main()
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2 and stderr.startswith('error: '), (flag, stderr)
    assert len(stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
  proc = _study(tmp_path, '--longer=0')   # the script, run from another directory
  assert proc.returncode == 2 and proc.stderr == 'error: --longer must be at least 1, got 0\n', proc.stderr
  assert not list(tmp_path.iterdir())


def test_init_scale_compares_the_kinds_branches(tmp_path):
  proc = subprocess.run([sys.executable, f'{ROOT}/studies/kind_gap/init_scale.py', '--quick'], cwd=tmp_path,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {}
  for line in proc.stdout.splitlines()[2:]:
    model, std, q_rms, ffn_rms = (cell.strip() for cell in line.strip('|').split('|'))
    rows[(model, std.split('×')[1].rstrip(')'))] = (float(q_rms), float(ffn_rms))
  assert len(rows) == 12
  for scale in ('1×', '4×'):
    tf, dense = rows[(f'tokenformer {scale}', '1')], rows[(f'dense {scale}', '1')]
    assert tf[1] > 2 * dense[1]   # the FFN branch starts larger at the same value std
    # every Pattention output scales with the value std; dense q does not depend on it
    assert rows[(f'tokenformer {scale}', '0.0625')][1] == pytest.approx(tf[1] / 16, rel=0.02)  # printed to 3 decimals
    assert rows[(f'tokenformer {scale}', '0.0625')][0] == pytest.approx(tf[0] / 16, rel=0.02)
    assert rows[(f'dense {scale}', '0.0625')][0] == pytest.approx(dense[0])


def test_sizes_and_kinds():
  for quick in ('', '-quick'):
    smallest = kind_gap_cpu.get_config('tokenformer-x1' + quick).model
    for scale in kind_gap_cpu.SCALES:
      tf, dense = (kind_gap_cpu.get_config(f'{kind}-x{scale}' + quick).model for kind in kind_gap_cpu.KINDS)
      assert (tf.kind, dense.kind) == ('tokenformer', 'dense')
      assert kind_gap_study.non_embedding_params(tf) == scale * kind_gap_study.non_embedding_params(smallest)
      # the dense FFN width that gives the same parameter count: 4·d² + 2·d·mlp
      assert 4 * dense.d_model ** 2 + 2 * dense.d_model * dense.mlp_dim == (
          kind_gap_study.non_embedding_params(tf) // tf.num_layers)
      assert tf.d_model // tf.num_heads == (16 if quick else 32)
  # the smallest size is the default tiny model
  default, smallest = tiny.get_config(), kind_gap_cpu.get_config('tokenformer-x1')
  for key in ('num_layers', 'd_model', 'num_heads', 'n_qkv', 'n_proj', 'n_ffn'):
    assert smallest.model[key] == default.model[key]
  assert (smallest.train.steps, smallest.optimizer.warmup_frac) == (default.train.steps,
                                                                    default.optimizer.warmup_frac)
