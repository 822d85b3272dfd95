"""Pattention against the independent NumPy reference; τ modes, zero rows, gradients, init scale."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from tests import reference_numpy as ref
from tokenformer_jax.model.pattention import Pattention, pattention, wang_std


def _inputs(dtype, n=48, d_in=16, d_out=24, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(3, 5, d_in)).astype(dtype)
  k = (0.5 * rng.normal(size=(n, d_in))).astype(dtype)
  v = rng.normal(size=(n, d_out)).astype(dtype)
  return x, k, v


@pytest.mark.parametrize('n_ref', [None, 32])
def test_matches_numpy_float32(n_ref):
  x, k, v = _inputs(np.float32)
  got = np.asarray(pattention(jnp.asarray(x), jnp.asarray(k), jnp.asarray(v), n_ref))
  want = ref.pattention(x.astype(np.float64), k.astype(np.float64), v.astype(np.float64), n_ref)
  assert np.max(np.abs(got - want)) <= 1e-5


@pytest.mark.parametrize('n_ref', [None, 32])
def test_matches_numpy_float64(n_ref):
  x, k, v = _inputs(np.float64)
  with jax.enable_x64(True):
    got = np.asarray(pattention(jnp.asarray(x), jnp.asarray(k), jnp.asarray(v), n_ref))
    assert got.dtype == np.float64
  assert np.max(np.abs(got - ref.pattention(x, k, v, n_ref))) <= 1e-12


def test_tau_uses_current_count_unless_frozen():
  x, k, v = _inputs(np.float32)
  k_grown = np.concatenate([k, np.zeros((16, k.shape[1]), np.float32)])
  v_grown = np.concatenate([v, np.zeros((16, v.shape[1]), np.float32)])
  base = pattention(x, k, v)
  # zero keys add zero scores, so only τ can change the output: √64 vs √48
  recomputed = pattention(x, k_grown, v_grown)
  frozen = pattention(x, k_grown, v_grown, n_ref=48)
  np.testing.assert_allclose(frozen, base, rtol=1e-6, atol=1e-5)
  assert float(jnp.max(jnp.abs(recomputed - base))) > 1e-2


def test_zero_row_is_finite_and_other_rows_unchanged():
  x, k, v = _inputs(np.float32)
  x_zero = x.copy()
  x_zero[1, 2] = 0.0
  y = pattention(jnp.asarray(x_zero), k, v)
  assert bool(jnp.all(jnp.isfinite(y)))
  np.testing.assert_array_equal(np.asarray(y[1, 2]), 0.0)
  keep = np.ones(x.shape[:2], bool)
  keep[1, 2] = False
  np.testing.assert_allclose(np.asarray(y)[keep], np.asarray(pattention(x, k, v))[keep],
                             rtol=1e-6, atol=1e-5)
  grads = jax.grad(lambda xx: jnp.sum(pattention(xx, k, v)))(jnp.asarray(x_zero))
  assert bool(jnp.all(jnp.isfinite(grads)))


@pytest.mark.slow
def test_gradients():
  x, k, v = _inputs(np.float64, n=8, d_in=4, d_out=3)
  with jax.enable_x64(True):
    check_grads(lambda a, b, c: pattention(a, b, c), (x[:1, :2], k, v), order=2, modes=['rev'],
                atol=1e-6, rtol=1e-6)


def test_bf16_activations_keep_norm_in_float32():
  x, k, v = _inputs(np.float32)
  y = pattention(jnp.asarray(x, jnp.bfloat16), k, v)
  assert y.dtype == jnp.bfloat16
  want = ref.pattention(x.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
  assert np.max(np.abs(np.asarray(y, np.float32) - want)) < 0.1 * np.max(np.abs(want))


def test_module_init_axes_and_call():
  layer = Pattention(64, 32, 256, key_std=0.02, value_std=wang_std(12, 768), rngs=nnx.Rngs(0))
  assert layer.key_tokens.shape == (256, 64) and layer.value_tokens.shape == (256, 32)
  assert np.std(np.asarray(layer.key_tokens[...])) == pytest.approx(0.02, rel=0.05)
  assert np.std(np.asarray(layer.value_tokens[...])) == pytest.approx(0.00601, rel=0.05)
  assert layer.key_tokens.get_metadata()['out_sharding'] == ('param_tokens', 'embed')
  x = jnp.ones((2, 64))
  np.testing.assert_allclose(layer(x), pattention(x, layer.key_tokens[...], layer.value_tokens[...]))


def test_rejects_mismatched_tables():
  with pytest.raises(ValueError, match='value_tokens'):
    pattention(jnp.ones((2, 4)), jnp.ones((8, 4)), jnp.ones((7, 4)))


def _autodiff_pattention(x, k, v, n_ref=None):
  """The forward written plainly, so that jax differentiates it (the library uses a hand-written VJP)."""
  scores = x @ k.T
  tau = (n_ref or k.shape[0]) ** 0.5
  u = scores * tau / jnp.linalg.norm(scores, axis=-1, keepdims=True)
  return jax.nn.gelu(u, approximate=False) @ v


@pytest.mark.parametrize('n_ref', [None, 32])
def test_hand_written_backward_equals_autodiff(n_ref):
  x, k, v = _inputs(np.float64)
  dy = np.random.default_rng(5).normal(size=(3, 5, v.shape[1]))
  with jax.enable_x64(True):
    args = tuple(map(jnp.asarray, (x, k, v)))
    _, vjp = jax.vjp(lambda *a: pattention(*a, n_ref), *args)
    _, vjp_ref = jax.vjp(lambda *a: _autodiff_pattention(*a, n_ref), *args)
    for got, want in zip(vjp(jnp.asarray(dy)), vjp_ref(jnp.asarray(dy))):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-12)


def test_bfloat16_gradients_keep_table_dtype():
  x, k, v = _inputs(np.float32)
  grads = jax.grad(lambda kk, vv: jnp.sum(pattention(jnp.asarray(x, jnp.bfloat16), kk, vv)), (0, 1))(
      jnp.asarray(k), jnp.asarray(v))
  assert all(g.dtype == jnp.float32 for g in grads)
  with jax.enable_x64(True):
    want = jax.grad(lambda kk, vv: jnp.sum(_autodiff_pattention(jnp.asarray(x, jnp.float64), kk, vv)),
                    (0, 1))(jnp.asarray(k, jnp.float64), jnp.asarray(v, jnp.float64))
  for g, w in zip(grads, want):
    assert np.max(np.abs(np.asarray(g) - np.asarray(w))) <= 0.05 * np.max(np.abs(np.asarray(w)))


@pytest.mark.parametrize('rows, impl, primitive', [(5, 'erf', 'erf'), (6, 'erfc', 'erfc')])
def test_both_gelu_forms(rows, impl, primitive):
  """u·Φ(u) via erf (the CPU's choice: faster there) and jax.nn.gelu's erfc form (elsewhere: less TPU
  memory) compute the same function; config.resolve_model picks one per platform (attention_test).
  (Distinct shapes per case: jax caches a custom_vjp's trace per shape.)"""
  from tokenformer_jax.model import pattention as pattention_lib
  x, k, v = jnp.ones((rows, 8)), jnp.ones((16, 8)), jnp.ones((16, 8))
  jaxpr = str(jax.make_jaxpr(lambda *a: pattention(*a, gelu_impl=impl))(x, k, v))
  assert f' {primitive} ' in jaxpr
  if primitive == 'erf':
    assert 'erfc' not in jaxpr
  xs, ks, vs = (jnp.asarray(a) for a in _inputs(np.float32))
  np.testing.assert_allclose(pattention(xs, ks, vs, gelu_impl=impl), pattention(xs, ks, vs, gelu_impl='erf'),
                             rtol=1e-5, atol=1e-6)
  u = jnp.linspace(-8.0, 8.0, 1001)
  np.testing.assert_allclose(u * pattention_lib._normal_cdf(u), jax.nn.gelu(u, approximate=False),
                             atol=2e-6)
  with pytest.raises(ValueError, match='unknown GELU implementation'):
    pattention_lib.gelu(u, 'tanh')


@pytest.mark.slow
def test_gelu_gradient_from_its_output_matches_autodiff():
  """gelu_grad takes Φ(u) as GELU(u)/u: exact in float64, float32-accurate in float32, ½ at and near 0,
  and finite where GELU(u) underflows."""
  from tokenformer_jax.model import pattention as pattention_lib
  u64 = np.concatenate([np.linspace(-16.0, 16.0, 4001), [0.0, 1e-35, -1e-35, 1e-20, -1e-20, 1e-7]])
  with jax.enable_x64(True):
    exact = np.asarray(jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False)))(jnp.asarray(u64)))
    got64 = np.asarray(jax.vmap(jax.grad(lambda t: pattention_lib.gelu(t, 'erf')))(jnp.asarray(u64)))
  np.testing.assert_allclose(got64, exact, rtol=1e-12, atol=1e-15)
  u32 = jnp.asarray(u64, jnp.float32)
  got32 = np.asarray(jax.vmap(jax.grad(lambda t: pattention_lib.gelu(t, 'erf')))(u32))
  assert np.all(np.isfinite(got32))
  np.testing.assert_allclose(got32, exact, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize('dtype, erfs, divides', [(jnp.float32, 1, True), (jnp.bfloat16, 3, False)])
def test_backward_reuses_the_forward_gelu(dtype, erfs, divides):
  """float32: the backward divides Φ(u) out of the saved GELU outputs, so the whole gradient evaluates erf
  once (the forward's); bfloat16 outputs are too coarse for that, so Φ(u) is evaluated again."""
  x, k, v = (jnp.asarray(a) for a in _inputs(np.float32))
  loss = lambda xx: jnp.sum(pattention(xx.astype(dtype), k, v).astype(jnp.float32))
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(x))
  assert jaxpr.count(' erf ') == erfs
  assert (' div ' in jaxpr) == divides
