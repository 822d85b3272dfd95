"""The study's --quick variant, its training stood in for (fake_training.py: the driver's logic, not
the numbers, which come from the full run committed under studies/progressive_scaling/results/): both
baselines tuned, a growth arm at the from-scratch TokenFormer's best learning rate, a second seed, the
figure and tables written; a rerun reuses every run."""
import csv
import itertools
import subprocess
import sys

import pytest

from tests.helpers import ROOT, script_module
from tests.studies import fake_training
from tokenformer_jax.config import experiment_module

pytestmark = pytest.mark.study
STUDY = f'{ROOT}/studies/progressive_scaling/study.py'
study = script_module('studies/progressive_scaling/study.py')
experiment = experiment_module(f'{ROOT}/studies/progressive_scaling/experiment.py')


def _study(monkeypatch, out, work):
  monkeypatch.setattr(sys, 'argv', [STUDY, '--quick', '--arms=exact_carry', '--seeds=2', f'--out={out}',
                                    f'--workdir={work}'])
  study.main()
  with open(out / 'progressive_scaling.csv') as f:
    return list(csv.DictReader(f))


def test_quick_study(tmp_path, monkeypatch):
  fake_training.install(monkeypatch, study.study_runs)
  # one of the five growth arms (the others differ only in config.growth and config.stages, which
  # tests/training/growth_test.py and tests/training/stages_test.py cover)
  rows = _study(monkeypatch, tmp_path / 'out', tmp_path / 'work')
  lrs = [str(lr) for lr in experiment.QUICK['lrs']]
  runs = [(r['arm'], r['lr'], r['seed']) for r in rows]
  # 1: each baseline at every learning rate; 2: the growth arm at scratch's best; 3: seed 1 of all three
  assert runs[:4] == [(arm, lr, '0') for arm in ('scratch', 'dense') for lr in lrs]
  best = {arm: min((r for r in rows[:4] if r['arm'] == arm), key=lambda r: float(r['final_val_loss']))
          for arm in ('scratch', 'dense')}
  assert runs[4:] == [('exact_carry', best['scratch']['lr'], '0'), ('scratch', best['scratch']['lr'], '1'),
                      ('dense', best['dense']['lr'], '1'), ('exact_carry', best['scratch']['lr'], '1')]
  strongest = min(best.values(), key=lambda r: float(r['final_val_loss']))
  # a baseline reaches its own final loss by its end (at it, unless an earlier evaluation was lower)
  assert 0 < float(strongest['ratio_to_best_baseline']) <= 1.0
  assert 0 < float(best['scratch']['ratio_to_scratch']) <= 1.0
  by_key = {(r['arm'], r['seed']): r for r in rows if r['lr'] == best['scratch']['lr']}
  # the growth path spends fewer FLOPs than scratch over the same number of final-stage steps
  assert float(by_key[('exact_carry', '0')]['total_gflop']) < float(by_key[('scratch', '0')]['total_gflop'])
  # equal non-embedding parameters: the dense baseline costs the same FLOPs per step as scratch
  assert best['dense']['total_gflop'] == best['scratch']['total_gflop']
  assert all(r['reused'] == 'False' and float(r['train_s']) > 0 for r in rows)
  assert (tmp_path / 'out' / 'progressive_scaling.png').stat().st_size > 10_000
  table = (tmp_path / 'out' / 'progressive_scaling.md').read_text()
  assert '| exact_carry |' in table and '| baseline |' in table

  records = sorted(p.name for p in (tmp_path / 'out' / 'progressive_study_runs').iterdir())
  assert len(records) == len(rows) and all(name.endswith('.json') for name in records)
  # a rerun trains nothing (a fresh checkout holding the committed records): every run is found recorded
  # and keeps its seconds
  monkeypatch.setattr(study.study_runs, 'train', lambda *args: pytest.fail(f'trained again: {args}'))
  again = _study(monkeypatch, tmp_path / 'out', tmp_path / 'work')
  assert [r['reused'] for r in again] == ['True'] * len(rows)
  assert [r['train_s'] for r in again] == [r['train_s'] for r in rows]


def test_every_arm_has_a_config():
  for arm in experiment.ARMS:
    for name in (arm, arm + '-quick'):
      c = experiment.get_config(name)
      if arm in experiment.BASELINES:
        assert not c.stages and c.model.kind == ('dense' if arm == 'dense' else 'tokenformer')
        continue
      policy = ('exact', 'carry') if arm == 'freeze_old' else tuple(arm.split('_'))
      assert (c.growth.policy, c.growth.optimizer) == policy and len(c.stages) > 1
      # only freeze_old trains the new tokens alone, and only in its last stage
      assert [s.get('growth.freeze_old', False) for s in c.stages] == (
          [False] * (len(c.stages) - 1) + [arm == 'freeze_old'])
      steps = [stage['train.steps'] for stage in c.stages]
      if c.growth.optimizer == 'carry':   # the step count goes on: each stage ends at the running total
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
        if not name.endswith('-quick'):
          assert steps == list(itertools.accumulate(experiment.STAGE_STEPS))
      elif not name.endswith('-quick'):
        assert steps == list(experiment.STAGE_STEPS)


def test_bad_flags_are_one_line_errors(tmp_path, monkeypatch, capsys):
  for flag in ('--arms=exact_carry,no_such_arm', '--lrs=3e-3,fast'):
    monkeypatch.setattr(sys, 'argv', [STUDY, '--quick', flag, f'--out={tmp_path}'])
    with pytest.raises(SystemExit) as exit_:
      study.main()
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2 and stderr.startswith('error: '), (flag, stderr)
    assert len(stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
  # the script, run from another directory
  proc = subprocess.run([sys.executable, STUDY, '--quick', '--seeds=0', f'--out={tmp_path}'], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and proc.stderr == 'error: --seeds must be at least 1, got 0\n', proc.stderr
  assert not list(tmp_path.iterdir())
