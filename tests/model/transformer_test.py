"""The decoder against the NumPy reference forward; causality, rotary, parameter counts, remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import reference_numpy as ref
from tests.helpers import ROOT, cpu_model, small_config
from tokenformer_jax.config import experiment_module
from tokenformer_jax.model import transformer as model_lib

pile, progressive = (experiment_module(f'{ROOT}/experiments/{name}.py') for name in ('pile', 'progressive'))

VOCAB = 128


def _model(**overrides):
  c = small_config()
  for key, value in overrides.items():
    c.model[key] = value
  return c.model, model_lib.build(cpu_model(c.model), VOCAB, seed=3)


def _numpy_params(model):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize('n_refs', [(0, 0, 0), (48, 80, 200)])
def test_matches_numpy_reference(n_refs):
  m, model = _model(n_ref_qkv=n_refs[0], n_ref_proj=n_refs[1], n_ref_ffn=n_refs[2])
  tokens = np.random.default_rng(0).integers(0, VOCAB, size=(2, 24))
  got = np.asarray(model(jnp.asarray(tokens)))
  params = _numpy_params(model)
  for b in range(2):
    want = ref.forward(params, tokens[b], m.num_heads, n_refs=tuple(n or None for n in n_refs))
    assert np.max(np.abs(got[b] - want)) <= 1e-4 * np.max(np.abs(want))


def test_causal():
  _, model = _model()
  tokens = np.random.default_rng(1).integers(0, VOCAB, size=(1, 16))
  changed = tokens.copy()
  changed[0, 10:] = (changed[0, 10:] + 7) % VOCAB
  a, b = model(jnp.asarray(tokens)), model(jnp.asarray(changed))
  np.testing.assert_array_equal(np.asarray(a[0, :10]), np.asarray(b[0, :10]))
  assert float(jnp.max(jnp.abs(a[0, 10:] - b[0, 10:]))) > 1e-4


def test_rotary_depends_only_on_relative_position():
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, 32)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, 32)), jnp.float32)

  def score(pos_q, pos_k):
    cq, sq = model_lib.rotary_tables(jnp.array([[pos_q]]), 8, 10000.0)
    ck, sk = model_lib.rotary_tables(jnp.array([[pos_k]]), 8, 10000.0)
    return float(jnp.sum(model_lib.apply_rotary(q, cq, sq) * model_lib.apply_rotary(k, ck, sk)))

  assert score(7, 3) == pytest.approx(score(107, 103), rel=1e-4)
  assert score(7, 3) == pytest.approx(score(4, 0), rel=1e-4)
  assert score(7, 3) != pytest.approx(score(7, 5), rel=1e-3)
  # only the first rot_dim dims rotate
  cq, sq = model_lib.rotary_tables(jnp.array([[5]]), 8, 10000.0)
  np.testing.assert_array_equal(model_lib.apply_rotary(q, cq, sq)[..., 8:], q[..., 8:])


@pytest.mark.parametrize('size,millions', [('150m', 151.9), ('450m', 454.2), ('900m', 903.3),
                                           ('1.5b', 1587.2)])
def test_paper_parameter_counts(size, millions):
  c = pile.get_config(size)
  n = _count_params(c.model, 50304)
  assert n == model_lib.nonembedding_params(c.model) + 50304 * c.model.d_model   # the closed form
  assert round(n / 1e6, 1) == millions


def _count_params(m, vocab_size):
  """Parameters of the model, from abstract shapes (nothing allocated)."""
  abstract = model_lib.abstract_model(cpu_model(m), vocab_size)
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def test_progressive_family_counts():
  counts = [_count_params(progressive.get_config(s).model, 50304) for s in progressive.STAGES]
  assert counts == sorted(counts)
  assert round(counts[0] / 1e6, 1) == 123.6  # the paper's "124M"


def test_dense_baseline_counts_and_runs():
  m, model = _model(kind='dense', mlp_dim=96)
  d, L = m.d_model, m.num_layers
  assert _count_params(m, VOCAB) == (4 * d * d + 2 * d * 96) * L + VOCAB * d + 2 * d
  assert model(jnp.zeros((1, 8), jnp.int32)).shape == (1, 8, VOCAB)


@pytest.mark.slow
@pytest.mark.parametrize('policy', ['block', 'save_matmuls'])
def test_remat_same_gradients(policy):
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, VOCAB, size=(2, 16)))

  def grads(**kw):
    _, model = _model(**kw)
    graphdef, params = nnx.split(model)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens) ** 2)
    return jax.jit(jax.grad(loss))(params)   # jitted, as training runs it: one compile, not one per op

  for a, b in zip(jax.tree.leaves(grads()), jax.tree.leaves(grads(remat=policy))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  _, model = _model(dtype='bfloat16')
  params = nnx.state(model, nnx.Param)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = model(jnp.zeros((1, 8), jnp.int32))
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_layer_norm_backward_equals_autodiff():
  x = np.random.default_rng(4).normal(size=(2, 3, 16))
  dy = np.random.default_rng(5).normal(size=x.shape)

  def plain(x):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True) + 1e-5)

  with jax.enable_x64(True):
    y, vjp = jax.vjp(lambda a: model_lib.layer_norm(a, 1e-5), jnp.asarray(x))
    y_ref, vjp_ref = jax.vjp(plain, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(dy))[0]), np.asarray(vjp_ref(jnp.asarray(dy))[0]),
                               rtol=1e-10, atol=1e-12)


def _scan_unroll_of(model, tokens):
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(tokens))(state)
  (unroll,) = [e.params['unroll'] for e in jaxpr.jaxpr.eqns if e.primitive.name == 'scan']
  return unroll


@pytest.mark.slow
def test_unrolled_layers_compute_the_same_loss():
  tokens = jnp.asarray(np.random.default_rng(6).integers(0, VOCAB, size=(2, 16)))
  _, rolled = _model(scan_unroll=1)
  _, unrolled = _model(scan_unroll=2)
  assert (_scan_unroll_of(rolled, tokens), _scan_unroll_of(unrolled, tokens)) == (1, 2)
  np.testing.assert_allclose(np.asarray(unrolled(tokens)), np.asarray(rolled(tokens)), rtol=1e-5, atol=1e-6)
