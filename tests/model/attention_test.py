"""The attention implementations against each other and a plain softmax; platform defaults."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenformer_jax.config import resolve_model
from tokenformer_jax.model import attention
from tests.helpers import ROOT, small_config


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
    # one jitted function per side: op by op, each of the chunks' ops would be compiled on its own
    both = jax.jit(lambda fn, a, d: (lambda out, vjp: (out, vjp(d)))(*jax.vjp(fn, *a)), static_argnums=0)
    out, grads = both(lambda *a: attention.causal_attention(*a, impl='softmax_vjp'), args, jnp.asarray(dout))
    out_ref, grads_ref = both(_plain, args, jnp.asarray(dout))
    np.testing.assert_allclose(np.asarray(out), np.asarray(out_ref), rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, grads_ref):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-12)


def test_chunks_cover_the_sequence():
  for T in (1, 7, 100, 128, 256, 2048):
    chunks = attention.query_chunks(T)
    assert chunks[0][0] == 0 and chunks[-1][1] == T
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))


def test_xla_and_softmax_vjp_agree_in_float32():
  q, k, v = (jnp.asarray(a) for a in _qkv(128, np.float32))
  loss = lambda impl: lambda *a: jnp.sum(jnp.sin(attention.causal_attention(*a, impl=impl)))
  for got, want in zip(jax.jit(jax.grad(loss('softmax_vjp'), (0, 1, 2)))(q, k, v),
                       jax.jit(jax.grad(loss('xla'), (0, 1, 2)))(q, k, v)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)


def test_unknown_implementation_is_an_error():
  q, k, v = (jnp.asarray(a) for a in _qkv(4, np.float32))
  with pytest.raises(ValueError, match='unknown attention implementation'):
    attention.causal_attention(q, k, v, impl='flash')


def test_platform_defaults():
  m = small_config().model
  cpu = resolve_model(m, 'cpu')
  assert (cpu.attention_impl, cpu.gelu_impl, cpu.scan_unroll) == ('softmax_vjp', 'erf', m.num_layers)
  tpu = resolve_model(m, 'tpu')
  assert (tpu.attention_impl, tpu.gelu_impl, tpu.scan_unroll) == ('splash', 'erfc', 1)
  assert resolve_model(m, 'tpu', seq_len=256).attention_impl == 'splash'
  assert resolve_model(m, 'tpu', seq_len=200).attention_impl == 'xla'    # splash needs T % 128 == 0
  m.dtype = 'bfloat16'
  assert resolve_model(m, 'gpu').attention_impl == 'cudnn'
  m.attention_impl, m.gelu_impl, m.scan_unroll = 'xla', 'erfc', 2          # explicit choices are kept
  cpu = resolve_model(m, 'cpu')
  assert (cpu.attention_impl, cpu.gelu_impl, cpu.scan_unroll) == ('xla', 'erfc', 2)
  m.attention_impl = 'splash'                         # off a TPU the kernel runs in the interpreter
  assert resolve_model(m, 'cpu').attention_impl == 'splash_interpret'
  assert resolve_model(m, 'tpu').attention_impl == 'splash'
  assert m.attention_impl == 'splash'                 # the config itself is left as it was


def _splash_inputs(T=256, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(2, T, 4, 64)).astype(np.float32)) for _ in range(3))
  return q, k, v, jnp.asarray(rng.normal(size=(2, T, 4, 64)).astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize('T', [128, 384])
def test_splash_equals_plain_softmax_in_interpret_mode(T):
  """The Pallas TPU kernel, run by the Pallas interpreter on CPU: forward and all three gradients."""
  q, k, v, dout = _splash_inputs(T)
  out, vjp = jax.vjp(lambda *a: attention.causal_attention(*a, impl='splash_interpret'), q, k, v)
  out_ref, vjp_ref = jax.vjp(_plain, q, k, v)
  np.testing.assert_allclose(np.asarray(out), np.asarray(out_ref), atol=2e-5)
  for got, want in zip(vjp(dout), vjp_ref(dout)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=5e-5)


_MESH_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from tests.model import attention_test as t
from tokenformer_jax.config import base_config
from tokenformer_jax.model import attention
from tokenformer_jax.runtime import sharding
c = base_config()
c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 1, 2
mesh = sharding.make_mesh(c.mesh)
q, k, v, dout = t._splash_inputs(128)
def loss(q, k, v):
  with sharding.activation_sharding(mesh, c.sharding_rules):
    return jnp.sum(attention.causal_attention(q, k, v, impl='splash_interpret') * dout)
got = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(q, k, v)
want = jax.value_and_grad(lambda *a: jnp.sum(t._plain(*a) * dout), (0, 1, 2))(q, k, v)
print('loss', abs(float(got[0]) - float(want[0])) / abs(float(want[0])))
print('grads', max(float(jnp.max(jnp.abs(g - w))) for g, w in zip(got[1], want[1])))
print('manual', 'sdy.manual_computation' in jax.jit(loss).lower(q, k, v).as_text())
"""


@pytest.mark.slow
def test_splash_under_a_mesh_runs_per_shard_of_batch_and_heads():
  """Inside a step's activation_sharding the kernel runs in shard_map (batch over data, heads over
  tensor) on 4 devices; the result is the unsharded one."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _MESH_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = dict(line.split(' ', 1) for line in out.stdout.strip().splitlines())
  assert float(lines['loss']) < 1e-5 and float(lines['grads']) < 5e-5 and lines['manual'] == 'True'


def test_splash_needs_a_sequence_length_divisible_by_128():
  q, k, v, _ = _splash_inputs(128)
  with pytest.raises(ValueError, match='divisible by 128, got 64'):
    attention.causal_attention(q[:, :64], k[:, :64], v[:, :64], impl='splash_interpret')
  from tokenformer_jax import config as config_lib
  c = small_config()
  c.model.attention_impl = 'splash'
  with pytest.raises(config_lib.UserError, match='attention_impl=splash needs data.seq_len divisible'):
    config_lib.validate(c)
