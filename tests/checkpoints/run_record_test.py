"""run_record.py: a resume with other data settings is refused (naming the keys) unless accepted; then the
data iterator starts again. Optimizer and schedule changes go through, logged."""
import pytest
from absl import logging as absl_logging

from tests.helpers import small_config
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.errors import UserError
from tokenformer_jax.training import loop


def _saved(c, **changes):
  """checkpoint meta as a run with config c would save it, with dotted keys changed."""
  saved = c.to_dict()
  for key, value in changes.items():
    section, _, name = key.rpartition('.')
    (saved[section] if section else saved)[name] = value
  return {'config': saved}


@pytest.mark.parametrize('key,value', [('data.seq_len', 32), ('train.batch_size', 4), ('seed', 7),
                                       ('data.val_fraction', 0.1), ('data.corpus', 'other.txt'),
                                       ('data.prepared', '/datasets/a')])
def test_changed_data_settings_are_refused_by_name(key, value):
  c = small_config()
  with pytest.raises(UserError, match=rf'step 5 was trained on other data settings \({key}: '):
    run_record.check(_saved(c, **{key: value}), c, 5, accept_data_change=False)
  assert run_record.check(_saved(c, **{key: value}), c, 5, accept_data_change=True)


def test_a_prepared_dataset_carries_its_own_split():
  c = small_config()
  c.data.prepared = '/datasets/a'
  assert not run_record.check(_saved(c, **{'data.val_fraction': 0.2}), c, 5, accept_data_change=False)


def test_optimizer_and_schedule_changes_are_allowed_and_logged(monkeypatch):
  c = small_config()
  lines = []
  monkeypatch.setattr(absl_logging, 'info', lambda fmt, *args: lines.append(fmt % args))
  saved = _saved(c, **{'optimizer.lr': 0.01, 'train.steps': 5})
  assert not run_record.check(saved, c, 5, accept_data_change=False)
  assert any('optimizer.lr: checkpoint 0.01, now 0.003' in line for line in lines), lines
  assert any('train.steps: checkpoint 5, now 20' in line for line in lines), lines


@pytest.mark.slow
def test_an_accepted_change_restarts_the_data_and_later_resumes_check_the_new_settings(data_cache,
                                                                                        tmp_path):
  c = small_config(data_cache)
  c.train.steps, c.train.checkpoint_every = 4, 2
  loop.train(c, str(tmp_path), stop_at_step=2)
  c.data.seq_len = 32
  with pytest.raises(UserError, match=r'data.seq_len: checkpoint 64, now 32.*--accept_data_change'):
    loop.train(c, str(tmp_path))
  result = loop.train(c, str(tmp_path), accept_data_change=True)
  assert result.step == 4
  # the data position saved at step 4 counts batches of the new stream from its start: 2 of them
  mngr = store.manager(str(tmp_path), create=False)
  assert mngr.restore(4, args=store.ocp.args.Composite(
      data=store.ocp.args.JsonRestore())).data == {'global_batches': 2}
  c.train.steps = 6
  assert loop.train(c, str(tmp_path)).step == 6  # the new settings are the checkpoint's now
