"""The study's --quick variant end to end: arms train, the figure and tables are written.
(Checks the pipeline, not the numbers: those come from the full run, committed under
experiments/results/.)"""
import csv
import itertools
import subprocess
import sys

from experiments import progressive_scaling_cpu
from tests.conftest import ROOT


def test_quick_study(tmp_path):
  # three of the six arms: from scratch, a growth path and the dense model (the other growth arms
  # differ only in config.growth, which tests/growth_test.py and tests/stages_test.py cover)
  proc = subprocess.run([sys.executable, 'benchmarks/progressive_study.py', '--quick',
                         '--arms=exact_carry,dense', f'--out={tmp_path}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / 'progressive_scaling.csv') as f:
    rows = {row['arm']: row for row in csv.DictReader(f)}
  assert list(rows) == ['scratch', 'exact_carry', 'dense']
  assert set(rows) < set(progressive_scaling_cpu.ARMS)
  assert float(rows['scratch']['ratio_to_scratch']) == 1.0
  # the growth path spends fewer FLOPs than scratch over the same number of final-stage steps
  assert float(rows['exact_carry']['total_gflop']) < float(rows['scratch']['total_gflop'])
  # equal parameter counts: the dense baseline costs the same FLOPs per step as scratch
  assert float(rows['dense']['total_gflop']) == float(rows['scratch']['total_gflop'])
  assert (tmp_path / 'progressive_scaling.png').stat().st_size > 10_000
  assert '| exact_carry |' in (tmp_path / 'progressive_scaling.md').read_text()


def test_every_arm_has_a_config():
  for arm in progressive_scaling_cpu.ARMS:
    for name in (arm, arm + '-quick'):
      c = progressive_scaling_cpu.get_config(name)
      if arm in ('scratch', 'dense'):
        assert not c.stages and c.model.kind == ('dense' if arm == 'dense' else 'tokenformer')
      else:
        assert (c.growth.policy, c.growth.optimizer) == tuple(arm.split('_')) and len(c.stages) > 1
        steps = [stage['train.steps'] for stage in c.stages]
        if c.growth.optimizer == 'carry':   # the step count goes on: each stage ends at the running total
          assert steps == sorted(steps) and len(set(steps)) == len(steps)
          if not name.endswith('-quick'):
            assert steps == list(itertools.accumulate(progressive_scaling_cpu.STAGE_STEPS))
        elif not name.endswith('-quick'):
          assert steps == list(progressive_scaling_cpu.STAGE_STEPS)
