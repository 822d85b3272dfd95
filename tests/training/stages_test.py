"""A two-stage schedule (train → grow → train) end to end; reruns skip finished work and redo only
what an interruption cut short."""
import shutil

import pytest

from tests.helpers import small_config
from tokenformer_jax.checkpoints import store
from tokenformer_jax.errors import UserError
from tokenformer_jax.training import stages


def _config(cache, steps=(6, 12)):
  c = small_config(cache)
  c.stages = ({'model.n_qkv': 64, 'model.n_proj': 64, 'model.n_ffn': 256, 'train.steps': steps[0]},
              {'model.n_qkv': 96, 'model.n_proj': 80, 'model.n_ffn': 384, 'train.steps': steps[1]})
  c.train.eval_every = 6
  c.train.checkpoint_every = 6
  c.train.log_every = 2
  return c


def test_two_stages_then_rerun(data_cache, tmp_path):
  c = _config(data_cache)
  first = stages.run(c, str(tmp_path))
  assert [r.step for r in first] == [6, 12]  # carry: the step count goes on
  meta = store.read_meta(store.manager(stages.stage_dir(str(tmp_path), 1)), 12)
  assert meta['grown_from']['counts'] == {'qkv': 64, 'proj': 64, 'ffn': 256}
  assert meta['config']['model']['n_ffn'] == 384 and meta['config']['model']['n_ref_ffn'] == 256
  # grown exactly: stage 1 starts from stage 0's validation loss
  assert first[1].train_losses and first[1].val_losses[12] < first[0].val_losses[6] + 0.05

  again = stages.run(c, str(tmp_path))
  assert [r.step for r in again] == [6, 12] and not any(r.train_losses for r in again)

  # an interruption before stage 1's growth committed: rerunning redoes growth and training
  shutil.rmtree(stages.stage_dir(str(tmp_path), 1))
  redone = stages.run(c, str(tmp_path))
  assert redone[1].train_losses == first[1].train_losses
  assert redone[1].val_losses == first[1].val_losses


def test_reset_restarts_the_schedule(data_cache, tmp_path):
  c = _config(data_cache, steps=(6, 6))
  c.growth.optimizer = 'reset'
  c.growth.policy = 'paper'
  results = stages.run(c, str(tmp_path))
  assert [r.step for r in results] == [6, 6]


def test_stage_overrides_are_checked_before_anything_runs(data_cache, tmp_path):
  c = _config(data_cache)
  c.stages = ({'model.n_qkv': 64}, {'model.n_qkvv': 96})
  with pytest.raises(UserError, match='override model.n_qkvv=96: no such config key'):
    stages.run(c, str(tmp_path))
  c.stages = ({'model.n_qkv': 64}, {'model.n_qkv': -1})
  with pytest.raises(UserError, match='model.n_qkv must be positive'):
    stages.run(c, str(tmp_path))
  c.stages = ({'model.n_qkv': 64}, {'model.n_qkv': 48})
  with pytest.raises(UserError, match=r'stages\[1\] is not a growth of stages\[0\]: model.n_qkv: '
                                      r'checkpoint 64, config 48: a growth cannot make it smaller'):
    stages.run(c, str(tmp_path))
  c.stages = ({'model.n_qkv': 64}, {'model.d_model': 128})
  with pytest.raises(UserError, match=r'model.num_heads: checkpoint 4, config 4: heads keep their size'):
    stages.run(c, str(tmp_path))
  assert not any(tmp_path.iterdir())
  c.stages = ((64, 64, 256, 6),)
  with pytest.raises(UserError, match='must be a non-empty dict of overrides'):
    stages.run(c, str(tmp_path))
