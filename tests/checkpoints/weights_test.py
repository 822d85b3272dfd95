"""weights.py through its users: --init_from (a workdir, WORKDIR:STEP, a released file) starts a run at
step 0 from those parameters; growth takes an imported checkpoint or a released file as its source."""
import jax
import numpy as np
import pytest

from tests.helpers import reference_state_dict, small_config, train_small
from tokenformer_jax.checkpoints import reference_import
from tokenformer_jax.checkpoints import store
from tokenformer_jax.checkpoints import weights
from tokenformer_jax.errors import UserError
from tokenformer_jax.inference import loading
from tokenformer_jax.training import growth
from tokenformer_jax.training import loop


def _params_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def source(data_cache, tmp_path_factory):
  return train_small(tmp_path_factory.mktemp('init_src'), data_cache, steps=6, checkpoint_every=3)


@pytest.mark.slow
def test_init_from_a_workdir_step_starts_at_step_0_from_its_parameters(source, tmp_path):
  c, src = source
  c2 = small_config(c.data.cache_dir)
  c2.train.steps, c2.train.log_every = 2, 1
  c2.optimizer.lr, c2.optimizer.min_lr = 1e-12, 0.0   # (almost) no update: compare
  fresh = loop.train(c2, str(tmp_path / 'fresh'))
  started = loop.train(c2, str(tmp_path / 'w'), init_from=f'{src}:3')
  assert started.step == 2 and started.train_losses[1] < fresh.train_losses[1]
  source_params = loading.load(c, src, step=3).params
  for a, b in zip(jax.tree.leaves(source_params), jax.tree.leaves(started.state['params'])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  mngr = store.manager(str(tmp_path / 'w'), create=False)
  assert store.read_meta(mngr, 2)['initialized_from'] == {'path': src, 'step': 3}
  # a rerun resumes the workdir's own checkpoint; --init_from is for fresh runs only
  c2.train.steps = 3
  assert loop.train(c2, str(tmp_path / 'w'), init_from=src).step == 3
  assert store.read_meta(mngr, 3)['initialized_from'] == {'path': src, 'step': 3}


@pytest.mark.slow
def test_init_from_refuses_another_model_and_a_missing_source(source, tmp_path):
  c, src = source
  other = small_config(c.data.cache_dir)
  other.model.n_ffn = 128
  with pytest.raises(UserError, match=r'holds another model than the config: model.n_ffn: checkpoint 256'):
    loop.train(other, str(tmp_path / 'w'), init_from=src)
  with pytest.raises(UserError, match='neither a workdir nor a checkpoint file'):
    loop.train(c, str(tmp_path / 'w'), init_from=str(tmp_path / 'nothing'))
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_init_from_a_released_file(data_cache, tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  c = small_config(data_cache)
  c.train.steps = 1
  sd = reference_state_dict(c.model)
  path = tmp_path / 'released.safetensors'
  safetensors_numpy.save_file(sd, str(path))
  c.optimizer.lr, c.optimizer.min_lr = 1e-12, 0.0
  result = loop.train(c, str(tmp_path / 'w'), init_from=str(path))
  want = reference_import.to_params(sd, c.model, 512)
  for p, leaf in jax.tree_util.tree_flatten_with_path(result.state['params'])[0]:
    np.testing.assert_allclose(np.asarray(leaf), want[store.path_string(p)], atol=1e-6)
  c.model.n_ffn = 128
  with pytest.raises(UserError, match='model.n_ffn: checkpoint 256, config 128'):
    loop.train(c, str(tmp_path / 'w2'), init_from=str(path))


@pytest.mark.slow
def test_grow_an_imported_checkpoint_and_a_released_file_then_train_only_the_new_tokens(data_cache,
                                                                                         tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  c = small_config(data_cache)
  sd = reference_state_dict(c.model)
  path = tmp_path / 'released.safetensors'
  safetensors_numpy.save_file(sd, str(path))
  reference_import.convert(c, str(tmp_path / 'imported'), str(path))
  big = small_config(data_cache)
  big.model.n_ffn = 384
  grown = {}
  for name, src in (('from_import', str(tmp_path / 'imported')), ('from_file', str(path))):
    assert growth.grow(big, src, str(tmp_path / name)) == 0
    grown[name] = loading.load(big, str(tmp_path / name)).params
  _params_equal(grown['from_import'], grown['from_file'])
  ffn = np.asarray(grown['from_file']['blocks']['mlp']['key_tokens'])
  np.testing.assert_array_equal(ffn[:, :256], np.stack([sd[f'sequential.{i + 2}.mlp.key_param_tokens']
                                                        for i in range(2)]))
  assert not ffn[:, 256:].any()   # exact growth: new keys 0
  # the grown checkpoint trains on, only its new tokens moving (parameter-efficient adaptation)
  big.growth.freeze_old = True
  big.train.steps = 2
  result = loop.train(big, str(tmp_path / 'from_file'))
  after = np.asarray(result.state['params']['blocks']['mlp']['value_tokens'])
  before = np.asarray(grown['from_file']['blocks']['mlp']['value_tokens'])
  np.testing.assert_array_equal(after[:, :256], before[:, :256])
  assert np.abs(after[:, 256:] - before[:, 256:]).max() > 0
  np.testing.assert_array_equal(np.asarray(result.state['params']['embedding']),
                                np.asarray(grown['from_file']['embedding']))


def test_a_file_source_has_no_steps(tmp_path):
  path = tmp_path / 'x.safetensors'
  path.write_bytes(b'')
  with pytest.raises(UserError, match='a checkpoint file has no steps'):
    weights.open_source(f'{path}:3', small_config())
