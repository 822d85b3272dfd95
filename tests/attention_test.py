"""The attention implementations against each other and a plain softmax; platform defaults."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenformer_jax import attention
from tokenformer_jax.model import for_platform
from tests.conftest import small_config


def _plain(q, k, v):
  """softmax(q kᵀ/√H + causal mask) v, written out for jax to differentiate."""
  T, H = q.shape[1], q.shape[-1]
  scores = jnp.einsum('btnh,bsnh->bnts', q, k) * H ** -0.5
  scores = jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores, -jnp.inf)
  return jnp.einsum('bnts,bsnh->btnh', jax.nn.softmax(scores, axis=-1), v)


def _qkv(T, dtype=np.float64, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=(2, T, 3, 8)).astype(dtype) for _ in range(3))


@pytest.mark.parametrize('T', [1, 7, 64, 192, 256])
def test_softmax_vjp_equals_autodiff_of_plain_softmax(T):
  q, k, v = _qkv(T)
  dout = np.random.default_rng(1).normal(size=q.shape)
  with jax.enable_x64(True):
    args = tuple(map(jnp.asarray, (q, k, v)))
    out, vjp = jax.vjp(lambda *a: attention.causal_attention(*a, impl='softmax_vjp'), *args)
    out_ref, vjp_ref = jax.vjp(_plain, *args)
    np.testing.assert_allclose(np.asarray(out), np.asarray(out_ref), rtol=1e-12, atol=1e-12)
    for got, want in zip(vjp(jnp.asarray(dout)), vjp_ref(jnp.asarray(dout))):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-12)


def test_chunks_cover_the_sequence():
  for T in (1, 7, 100, 128, 256, 2048):
    chunks = attention.query_chunks(T)
    assert chunks[0][0] == 0 and chunks[-1][1] == T
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))


def test_xla_and_softmax_vjp_agree_in_float32():
  q, k, v = (jnp.asarray(a) for a in _qkv(128, np.float32))
  loss = lambda impl: lambda *a: jnp.sum(jnp.sin(attention.causal_attention(*a, impl=impl)))
  for got, want in zip(jax.grad(loss('softmax_vjp'), (0, 1, 2))(q, k, v),
                       jax.grad(loss('xla'), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)


def test_unknown_implementation_is_an_error():
  q, k, v = (jnp.asarray(a) for a in _qkv(4, np.float32))
  with pytest.raises(ValueError, match='unknown attention implementation'):
    attention.causal_attention(q, k, v, impl='flash')


def test_platform_defaults():
  m = small_config().model
  cpu = for_platform(m, 'cpu')
  assert (cpu.attention_impl, cpu.scan_unroll) == ('softmax_vjp', m.num_layers)
  tpu = for_platform(m, 'tpu')
  assert (tpu.attention_impl, tpu.scan_unroll) == ('xla', 1)
  m.dtype = 'bfloat16'
  assert for_platform(m, 'gpu').attention_impl == 'cudnn'
  m.attention_impl, m.scan_unroll = 'xla', 2          # explicit choices are kept
  assert (for_platform(m, 'cpu').attention_impl, for_platform(m, 'cpu').scan_unroll) == ('xla', 2)
