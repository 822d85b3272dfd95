"""Strict restore: any difference of paths or shapes is refused before a byte is read."""
import grain
import jax
import numpy as np
import pytest

from tests.conftest import small_config
from tokenformer_jax import checkpoint, sharding
from tokenformer_jax import state as state_lib
from tokenformer_jax.errors import UserError


def _iterator(skip: int = 0):
  it = iter(grain.MapDataset.range(1000).batch(4).to_iter_dataset())
  for _ in range(skip):
    next(it)
  return it


def _spec(**model):
  c = small_config()
  for key, value in model.items():
    c.model[key] = value
  return c, state_lib.make_spec(c, 128, sharding.make_mesh(c.mesh))


@pytest.fixture()
def saved(tmp_path):
  c, spec = _spec()
  state = state_lib.init_state(spec, c)
  mngr = checkpoint.manager(str(tmp_path))
  checkpoint.save(mngr, 5, state, _iterator(skip=7), checkpoint.run_meta(c, 128))
  return mngr, state


def test_roundtrip_restores_state_and_iterator(saved):
  mngr, state = saved
  c, spec = _spec()
  it = _iterator()
  restored = checkpoint.restore(mngr, 5, state_lib.abstract_targets(spec), it)
  np.testing.assert_array_equal(next(it), next(_iterator(skip=7)))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('change,needle', [
    ({'num_layers': 3}, 'params/blocks/key/key_tokens: checkpoint (2, 64, 64), model (3, 64, 64)'),
    ({'n_ffn': 128}, 'params/blocks/mlp/key_tokens: checkpoint (2, 256, 64), model (2, 128, 64)'),
    ({'d_model': 32}, 'params/blocks/key/key_tokens: checkpoint (2, 64, 64), model (2, 64, 32)'),
    ({'kind': 'dense'}, 'params/blocks/key/key_tokens in the checkpoint'),
])
def test_mismatch_is_refused(saved, change, needle):
  mngr, _ = saved
  _, spec = _spec(**change)
  with pytest.raises(UserError, match='does not match the model') as err:
    checkpoint.restore(mngr, 5, state_lib.abstract_targets(spec))
  assert needle in str(err.value)


def test_config_difference_named(saved):
  mngr, _ = saved
  c, _ = _spec(n_qkv=96)
  with pytest.raises(UserError, match=r'model.n_qkv: checkpoint 64, config 96'):
    checkpoint.check_config(checkpoint.read_meta(mngr, 5), c, 5)
