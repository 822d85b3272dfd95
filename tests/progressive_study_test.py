"""The study's --quick variant end to end: every arm trains, the figure and tables are written.
(Checks the pipeline, not the numbers: those come from the full run, committed under
experiments/results/.)"""
import csv
import subprocess
import sys

from tests.conftest import ROOT, load_experiment


def test_quick_study(tmp_path):
  proc = subprocess.run([sys.executable, 'benchmarks/progressive_study.py', '--quick',
                         f'--out={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / 'progressive_scaling.csv') as f:
    rows = {row['arm']: row for row in csv.DictReader(f)}
  assert set(rows) == set(load_experiment('progressive_scaling_cpu').ARMS)
  assert float(rows['scratch']['ratio_to_scratch']) == 1.0
  # the growth path spends fewer FLOPs than scratch over the same number of final-stage steps
  assert float(rows['exact_carry']['total_gflop']) < float(rows['scratch']['total_gflop'])
  # equal parameter counts: the dense baseline costs the same FLOPs per step as scratch
  assert float(rows['dense']['total_gflop']) == float(rows['scratch']['total_gflop'])
  assert (tmp_path / 'progressive_scaling.png').stat().st_size > 10_000
  assert '| exact_carry |' in (tmp_path / 'progressive_scaling.md').read_text()
