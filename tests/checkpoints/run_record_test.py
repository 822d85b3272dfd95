"""run_record.py: every config key has one role, and a resume treats it as its role says; a resume with
other data settings is refused (naming the keys) unless accepted, then the data iterator starts again.
Optimizer and schedule changes go through, logged."""
import pytest
from absl import logging as absl_logging

from tests.helpers import small_config
from tokenformer_jax import config as config_lib
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


def test_every_config_key_has_one_role_and_every_role_names_a_key():
  keys = run_record.flat_keys(config_lib.base_config().to_dict())
  assert 'model.d_model' in keys and 'seed' in keys and 'train.profile_steps' in keys
  assert sorted(set(keys) - set(run_record.ROLES)) == [], 'keys without a role in run_record.ROLES'
  assert sorted(set(run_record.ROLES) - set(keys)) == [], 'run_record.ROLES names keys that do not exist'
  for key in run_record.GROWTH_RULES:
    assert run_record.ROLES[f'model.{key}'] in (run_record.MODEL, run_record.ADOPTED), key
  for field, says in run_record.PREPARED_FROM.items():
    assert not says.startswith('data.') or says in run_record.ROLES, (field, says)


def _resume_with_saved(c, key, value):
  """run_record.for_resume of a checkpoint whose config differs from c at `key` alone."""
  return run_record.for_resume({**_saved(c, **{key: value}), 'vocab_size': 512}, c, 5,
                               accept_data_change=False)


@pytest.mark.parametrize('key', sorted(run_record.ROLES))
def test_a_resume_treats_each_key_as_its_role_says(key):
  c = small_config()
  role = run_record.ROLES[key]
  refused = role in (run_record.MODEL, run_record.DATA, run_record.RAW_DATA)  # small_config: a raw corpus
  if role == run_record.ADOPTED:   # the checkpoint's frozen τ is taken where the config leaves it at 0
    assert _resume_with_saved(c, key, 7)[0].model[key.split('.')[1]] == 7
    c.model[key.split('.')[1]] = 9
    refused = True
  if refused:
    with pytest.raises(UserError, match=f'{key}: checkpoint'):
      _resume_with_saved(c, key, ('another value',))
  else:
    cfg, restart = _resume_with_saved(c, key, ('another value',))
    assert not restart and cfg.to_dict() == c.to_dict()


@pytest.mark.parametrize('key,value', [('data.seq_len', 32), ('train.batch_size', 4), ('seed', 7),
                                       ('data.val_fraction', 0.1), ('data.corpus', 'other.txt'),
                                       ('data.prepared', '/datasets/a')])
def test_changed_data_settings_are_refused_by_name(key, value):
  c = small_config()
  with pytest.raises(UserError, match=rf'step 5 was trained on other data settings \({key}: '):
    run_record.check_stream(_saved(c, **{key: value}), c, 5, accept_data_change=False)
  assert run_record.check_stream(_saved(c, **{key: value}), c, 5, accept_data_change=True)


def test_a_prepared_dataset_carries_its_own_split():
  c = small_config()
  c.data.prepared = '/datasets/a'
  assert not run_record.check_stream(_saved(c, **{'data.val_fraction': 0.2}), c, 5, accept_data_change=False)


def test_optimizer_and_schedule_changes_are_allowed_and_logged(monkeypatch):
  c = small_config()
  lines = []
  monkeypatch.setattr(absl_logging, 'info', lambda fmt, *args: lines.append(fmt % args))
  saved = _saved(c, **{'optimizer.lr': 0.01, 'train.steps': 5})
  assert not run_record.check_stream(saved, c, 5, accept_data_change=False)
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
