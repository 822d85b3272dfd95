"""The grow-dims study: its --quick pipeline trained for real (two arms, the baselines, a carried variant:
the growth in width and depth through the command line, the curves, the ratios, the figure); its
priority logic over every arm with the training stood in for (fake_training.py); its arms' configs; its
flags' errors. The numbers of the full run are committed under studies/grow_dims/results/."""
import csv
import json
import math
import subprocess
import sys

import pytest

from tests.helpers import ROOT, script_module
from tests.studies import fake_training
from tokenformer_jax.config import experiment_module
from tokenformer_jax.model import transformer as model_lib

pytestmark = pytest.mark.study
STUDY = f'{ROOT}/studies/grow_dims/study.py'
study = script_module('studies/grow_dims/study.py')
experiment = experiment_module(f'{ROOT}/studies/grow_dims/experiment.py')


def _rows(out):
  with open(out / 'grow_dims.csv') as f:
    return list(csv.DictReader(f))


def test_quick_pipeline_trains(tmp_path):
  """Real training: both baselines at one rate, the width and dense-depth arms, the better one carried."""
  proc = subprocess.run([sys.executable, STUDY, '--quick', f'--out={tmp_path}', f'--workdir={tmp_path / "w"}',
                         '--arms=width,dense-depth', '--lrs=1e-2', '--seeds=1', '--tune-optimizer=1',
                         '--tune-lr=0', '--baseline-seeds=1', '--jobs=2'],
                        cwd=tmp_path, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {r['arm']: r for r in _rows(tmp_path)}
  better = min(('width', 'dense-depth'), key=lambda arm: float(rows[arm]['final_val_loss']))
  assert set(rows) == {'scratch', 'dense', 'width', 'dense-depth', better + '-carry'}
  # trained: below the uniform guess over the 512-piece vocabulary, every run, all at the one rate
  assert all(float(r['final_val_loss']) < math.log(512) and r['lr'] == '0.01' for r in rows.values())
  # every arm ends at the baselines' non-embedding parameters (width: its final LayerNorm is wider);
  # growing spends fewer FLOPs than scratch
  params = {arm: int(r['nonembedding_params']) for arm, r in rows.items()}
  assert params['dense'] == params['scratch'] == params['dense-depth'] == params['width'] - 2 * 64
  assert float(rows['dense-depth']['total_gflop']) < float(rows['scratch']['total_gflop'])
  assert rows['dense']['total_gflop'] == rows['scratch']['total_gflop']
  assert 0 < float(rows['scratch']['ratio_to_scratch']) <= 1.0
  # an evaluation every 10 steps: 4 in 40 steps from scratch, 2 per 20-step stage of a growth
  for arm in rows:
    record = json.loads((tmp_path / 'grow_dims_runs' / f'{arm}-lr0.01-seed0.json').read_text())
    assert len(record['curve']) == 4, (arm, record)
  assert (tmp_path / 'grow_dims.png').stat().st_size > 10_000
  assert f'| {better}-carry | 0.01 | 0 |' in (tmp_path / 'grow_dims.md').read_text()


def _study(monkeypatch, out):
  monkeypatch.setattr(sys, 'argv', [STUDY, '--quick', f'--out={out}', f'--workdir={out / "work"}', '--jobs=2'])
  study.main()
  return _rows(out)


def test_runs_in_priority_order(tmp_path, monkeypatch):
  fake_training.install(monkeypatch, study.study_runs)
  rows = _study(monkeypatch, tmp_path)
  runs = [(r['arm'], float(r['lr']), int(r['seed'])) for r in rows]
  lrs = list(study.QUICK_LRS)
  loss = {run: float(r['final_val_loss']) for run, r in zip(runs, rows)}
  # 1: both baselines at every rate
  assert runs[:4] == [(arm, lr, 0) for arm in ('scratch', 'dense') for lr in lrs]
  best = {arm: min(lrs, key=lambda lr: loss[(arm, lr, 0)]) for arm in ('scratch', 'dense')}
  # 2: every arm at its kind's best rate
  rate = {arm: best['dense' if arm.startswith('dense') else 'scratch'] for arm in study.GROWTH_ARMS}
  assert runs[4:10] == [(arm, rate[arm], 0) for arm in study.GROWTH_ARMS]
  # ranked among the arms that end at the baselines' size: all but dense-width
  ranked = sorted([a for a in study.GROWTH_ARMS if a != 'dense-width'], key=lambda arm: loss[(arm, rate[arm], 0)])
  strongest = min(('scratch', 'dense'), key=lambda arm: loss[(arm, best[arm], 0)])
  # 3: the best arm's second seed; 4: the two best carried; 5: the best at the other rate; 6: the
  # strongest baseline's second seed
  assert runs[10:] == ([(ranked[0], rate[ranked[0]], 1)] +
                       [(arm + '-carry', rate[arm], 0) for arm in ranked[:2]] +
                       [(ranked[0], lr, 0) for lr in lrs if lr != rate[ranked[0]]] +
                       [(strongest, best[strongest], 1)])
  target = min(loss[(arm, best[arm], 0)] for arm in ('scratch', 'dense'))
  for run, r in zip(runs, rows):   # a run reaches the strongest baseline's loss iff it ends at or below it
    assert (r['ratio_to_best_baseline'] != '') == (float(r['final_val_loss']) <= target), r
  assert (tmp_path / 'grow_dims.png').stat().st_size > 10_000
  assert '| dense-width | ' in (tmp_path / 'grow_dims.md').read_text()
  # a rerun trains nothing: every run is found recorded
  monkeypatch.setattr(study.study_runs, 'train', lambda *args: pytest.fail(f'trained again: {args}'))
  assert [r['reused'] for r in _study(monkeypatch, tmp_path)] == ['True'] * len(rows)


@pytest.mark.parametrize('quick', [False, True])
def test_every_arm_has_a_config(quick):
  suffix = '-quick' * quick
  final = experiment.get_config('scratch' + suffix)
  size = model_lib.nonembedding_params(final.model)
  dense = experiment.get_config('dense' + suffix)
  assert dense.model.kind == 'dense' and model_lib.nonembedding_params(dense.model) == size
  stages, steps = (2, 20) if quick else (4, experiment.STAGE_STEPS)
  assert final.train.steps == dense.train.steps == stages * steps and not final.stages
  for arm in study.GROWTH_ARMS:
    for optimizer in ('reset', 'carry'):
      c = experiment.get_config(arm + '-carry' * (optimizer == 'carry') + suffix)
      assert (c.growth.policy, c.growth.optimizer) == ('paper', optimizer)
      ends = [stage['train.steps'] for stage in c.stages]
      assert ends == ([steps * (i + 1) for i in range(stages)] if optimizer == 'carry' else [steps] * stages)
      # all start from the one model (of the arm's kind) with the same parameters; all but dense-width
      # end at the baselines' (TokenFormer's width ×2 per stage adds 2·d of final LayerNorm)
      assert c.stages[0]['model.d_model'] == 64 and c.stages[0]['model.num_layers'] == 2
      params = model_lib.nonembedding_params(c.model)
      if arm == 'dense-width':
        assert params > size
      else:
        assert abs(params - size) <= 2 * c.model.d_model, arm
  with pytest.raises(ValueError, match='unknown arm'):
    experiment.get_config('dense-scratch')


def test_bad_flags_are_one_line_errors(tmp_path):
  for flag, message in (('--arms=width,height', "unknown growth arms ['height']"),
                        ('--lrs=fast', "--lrs wants comma-separated numbers, got 'fast'"),
                        ('--jobs=0', '--jobs must be at least 1, got 0')):
    proc = subprocess.run([sys.executable, STUDY, '--quick', flag, f'--out={tmp_path / "out"}'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith(f'error: {message}'), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / 'out').exists()
