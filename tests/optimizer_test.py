"""Schedule shape and the weight-decay mask."""
import jax.numpy as jnp
import pytest

from tokenformer_jax.config import base_config
from tokenformer_jax.optimizer import decay_mask, schedule


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
