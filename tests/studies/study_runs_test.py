"""studies/study_runs.py with real training: one quick two-stage growth run through the command line, its
validation curve against cumulative FLOPs, its record, and the record reused without the workdir."""
import shutil

import pytest

from tests.helpers import ROOT, script_module
from tests.studies import fake_training
from tokenformer_jax import config as config_lib

pytestmark = pytest.mark.study
EXPERIMENT = f'{ROOT}/studies/progressive_scaling/experiment.py'
study_runs = script_module('studies/study_runs.py')


def test_a_run_is_trained_recorded_and_reused(tmp_path):
  experiment = config_lib.experiment_module(EXPERIMENT)
  changes = study_runs.lr_and_seed(1e-2, 0)
  work, records = str(tmp_path / 'work'), str(tmp_path / 'records')
  record = study_runs.Runs(EXPERIMENT, experiment, work, records, quick=True).run('exact_carry', changes, 'run')
  assert not record['reused'] and record['train_s'] > 0
  # an evaluation every 10 steps through both stages, at the FLOPs the stand-in of the logic tests counts
  cfg = config_lib.apply_overrides(experiment.get_config('exact_carry-quick'), changes)
  expected = [spent for spent, _ in fake_training.val_curve(cfg, work)]
  assert [spent for spent, _ in record['curve']] == pytest.approx(expected) and len(expected) == 4
  assert all(loss > 0 for _, loss in record['curve'])

  shutil.rmtree(work)   # a fresh checkout holding the committed record: nothing is trained again
  again = study_runs.Runs(EXPERIMENT, experiment, work, records, quick=True).run('exact_carry', changes, 'run')
  assert again['reused'] and again['train_s'] == record['train_s']
  assert [tuple(point) for point in again['curve']] == record['curve']   # JSON keeps them as lists
  with pytest.raises(SystemExit, match='move it away to rerun'):   # a record of another run, same name
    study_runs.Runs(EXPERIMENT, experiment, work, records, quick=True).run('paper_reset', changes, 'run')
