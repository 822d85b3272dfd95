"""Schedule shape, the weight-decay mask, and freezing rows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenformer_jax.config import base_config
from tokenformer_jax.training.optimizer import decay_mask, make_optimizer, schedule


def test_warmup_then_cosine_to_min_lr():
  o = base_config().optimizer
  o.lr, o.min_lr, o.warmup_frac = 6e-4, 6e-5, 0.01
  lr = schedule(o, 10_000)
  assert float(lr(0)) == 0.0
  assert float(lr(50)) == pytest.approx(3e-4)
  assert float(lr(100)) == pytest.approx(6e-4)
  assert float(lr(5050)) == pytest.approx((6e-4 + 6e-5) / 2, rel=1e-3)
  assert float(lr(10_000)) == pytest.approx(6e-5)


def test_no_decay_on_norms():
  params = {'embedding': jnp.ones((4, 2)), 'final_norm_scale': jnp.ones(2),
            'final_norm_bias': jnp.zeros(2), 'blocks': {'mlp': {'key_tokens': jnp.ones((1, 3, 2))}}}
  mask = decay_mask(params)
  assert mask['embedding'] and mask['blocks']['mlp']['key_tokens']
  assert not mask['final_norm_scale'] and not mask['final_norm_bias']


def test_frozen_rows_keeps_the_state_structure_and_masks_updates():
  cfg = base_config().optimizer
  params = {'table': jnp.ones((2, 4, 3)), 'other': jnp.ones((3,))}
  grads = jax.tree.map(jnp.ones_like, params)
  free = make_optimizer(cfg, schedule(cfg, 10))
  # per-axis masks of the old (frozen) positions: rows 0, 1 of block 0, and all of 'other'
  old_rows = np.array([1, 1, 0, 0], np.float32).reshape(1, 4, 1)
  old_blocks = np.array([1, 0], np.float32).reshape(2, 1, 1)
  frozen = make_optimizer(cfg, schedule(cfg, 10),
                          {'table': (old_blocks, old_rows), 'other': (np.ones(3, np.float32),)})
  # the same optimizer state either way, so a checkpoint resumes frozen or not
  assert jax.tree.structure(free.init(params)) == jax.tree.structure(frozen.init(params))
  # jitted: op by op, each of the chained transforms' ops would be compiled on its own
  updates, _ = jax.jit(frozen.update)(grads, frozen.init(params), params)
  free_updates, _ = jax.jit(free.update)(grads, free.init(params), params)
  assert not np.asarray(updates['other']).any() and not np.asarray(updates['table'][0, :2]).any()
  np.testing.assert_array_equal(updates['table'][0, 2:], free_updates['table'][0, 2:])
  np.testing.assert_array_equal(updates['table'][1], free_updates['table'][1])
