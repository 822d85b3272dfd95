"""Causal softmax attention for training, with the implementation chosen per platform.

`causal_attention(q, k, v, impl)` on [B, T, N, H] inputs:
- 'cudnn': jax.nn.dot_product_attention's cuDNN flash attention (GPU; bf16/f16 inputs).
- 'xla': jax.nn.dot_product_attention's XLA implementation.
- 'softmax_vjp': plain XLA ops in head-major layout, blocked over query chunks so that most of the masked
  upper triangle is never computed, with a hand-written backward that reuses the saved probabilities:
  dS = P ⊙ (dP − rowsum(dO ⊙ O)). On CPU this is faster than the autodiff of the 'xla' path (less work,
  one reduction of width H instead of T, no mask or max recomputed in the backward); the probabilities it
  saves (about half of [B, N, T, T]) are what makes it a CPU choice and not a long-sequence one.
- 'splash': the Pallas TPU splash-attention kernel (blocked flash attention that skips the fully masked
  blocks); sequence lengths divisible by 128. 'splash_interpret': the same kernel in the Pallas
  interpreter, which runs anywhere (slowly): how the tests check it on CPU.
The model config names one of these; '' there is resolved per platform by config.resolve_model (see
`default_impl`). All compute the same function (scale 1/√H, causal mask); the tests check them against
each other.
"""
import functools

import jax
import jax.numpy as jnp

from tokenformer_jax.runtime import sharding

IMPLEMENTATIONS = ('', 'xla', 'cudnn', 'softmax_vjp', 'splash', 'splash_interpret')
SPLASH_BLOCK = 128      # the splash kernel's sequence blocks are multiples of this


def default_impl(dtype, platform: str, seq_len: int | None = None) -> str:
  """What '' resolves to on `platform`: 'cudnn' on GPU when the dtype allows it, 'splash' on TPU when the
  sequence length allows it, 'softmax_vjp' on CPU, 'xla' otherwise."""
  if platform in ('gpu', 'cuda', 'rocm') and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return 'cudnn'
  if platform == 'tpu' and (seq_len is None or seq_len % SPLASH_BLOCK == 0):
    return 'splash'
  if platform == 'cpu':
    return 'softmax_vjp'
  return 'xla'


def causal_attention(q_BxTxNxH: jax.Array, k_BxTxNxH: jax.Array, v_BxTxNxH: jax.Array,
                     impl: str) -> jax.Array:
  """softmax(q kᵀ / √H, causal) v → [B, T, N, H] in q's dtype."""
  if impl == 'softmax_vjp':
    return _softmax_vjp(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH)
  if impl in ('splash', 'splash_interpret'):
    return _splash(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, interpret=impl == 'splash_interpret')
  if impl not in ('xla', 'cudnn'):
    raise ValueError(f'unknown attention implementation {impl!r}; choose from {IMPLEMENTATIONS}')
  head_dim = q_BxTxNxH.shape[-1]
  return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, scale=head_dim ** -0.5,
                                      is_causal=True, implementation=impl)


def _head_major(x_BxTxNxH):
  return jnp.swapaxes(x_BxTxNxH, 1, 2)


def query_chunks(T: int) -> list[tuple[int, int]]:
  """Query ranges [t0, t1) of the causal blocking: chunk i attends only to keys [0, t1), so the masked
  upper triangle is mostly never computed ((C+1)/2C of the full work for C chunks). Chunks of 64 queries
  (at most 4 chunks) were fastest for T = 128…256 on CPU."""
  chunks = max(1, min(4, T // 64))
  while T % chunks:
    chunks -= 1
  size = T // chunks
  return [(i * size, (i + 1) * size) for i in range(chunks)]


@jax.custom_vjp
def _softmax_vjp(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH):
  return _forward(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH)[0]


def _forward(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH):
  """Scores and softmax in float32 (at least) per query chunk; probabilities saved in the compute dtype."""
  dtype = q_BxTxNxH.dtype
  T, H = q_BxTxNxH.shape[1], q_BxTxNxH.shape[-1]
  q, k, v = _head_major(q_BxTxNxH), _head_major(k_BxTxNxH), _head_major(v_BxTxNxH)
  outs, probs = [], []
  for t0, t1 in query_chunks(T):
    scores_BxNxCxS = jnp.einsum('bnth,bnsh->bnts', q[:, :, t0:t1], k[:, :, :t1])
    scores_BxNxCxS = scores_BxNxCxS.astype(jnp.promote_types(dtype, jnp.float32)) * H ** -0.5
    causal_CxS = jnp.arange(t0, t1)[:, None] >= jnp.arange(t1)[None, :]
    probs_BxNxCxS = jax.nn.softmax(jnp.where(causal_CxS, scores_BxNxCxS, -jnp.inf), axis=-1).astype(dtype)
    outs.append(jnp.einsum('bnts,bnsh->bnth', probs_BxNxCxS, v[:, :, :t1]))
    probs.append(probs_BxNxCxS)
  out_BxNxTxH = jnp.concatenate(outs, axis=2)
  return _head_major(out_BxNxTxH), (q, k, v, tuple(probs), out_BxNxTxH)


def _backward(saved, dout_BxTxNxH):
  """Per chunk: dP = dO Vᵀ; dS = P ⊙ (dP − rowsum(dO ⊙ O)); dQ = dS K; dK += dSᵀ Q; dV += Pᵀ dO."""
  q, k, v, probs, out_BxNxTxH = saved
  dtype = q.dtype
  acc = jnp.promote_types(dtype, jnp.float32)
  scale = q.shape[-1] ** -0.5
  dout = _head_major(dout_BxTxNxH)
  delta_BxNxTx1 = jnp.sum(dout.astype(acc) * out_BxNxTxH.astype(acc), axis=-1, keepdims=True)
  dq_chunks, dk, dv = [], jnp.zeros(k.shape, acc), jnp.zeros(v.shape, acc)
  for (t0, t1), probs_BxNxCxS in zip(query_chunks(q.shape[2]), probs):
    dout_c = dout[:, :, t0:t1]
    dprobs_BxNxCxS = jnp.einsum('bnth,bnsh->bnts', dout_c, v[:, :, :t1]).astype(acc)
    dscores_BxNxCxS = (probs_BxNxCxS.astype(acc) * (dprobs_BxNxCxS - delta_BxNxTx1[:, :, t0:t1])
                       * scale).astype(dtype)
    dq_chunks.append(jnp.einsum('bnts,bnsh->bnth', dscores_BxNxCxS, k[:, :, :t1]))
    dk = dk.at[:, :, :t1].add(jnp.einsum('bnts,bnth->bnsh', dscores_BxNxCxS, q[:, :, t0:t1]))
    dv = dv.at[:, :, :t1].add(jnp.einsum('bnts,bnth->bnsh', probs_BxNxCxS, dout_c))
  dq = jnp.concatenate(dq_chunks, axis=2)
  return _head_major(dq), _head_major(dk.astype(dtype)), _head_major(dv.astype(dtype))


_softmax_vjp.defvjp(_forward, _backward)


def _splash_block(T: int) -> int:
  """The largest of 512, 256, 128 that divides T."""
  if T % SPLASH_BLOCK:
    raise ValueError(f'splash attention needs a sequence length divisible by {SPLASH_BLOCK}, got {T}')
  return next(b for b in (512, 256, 128) if T % b == 0)


@functools.lru_cache(maxsize=16)
def _splash_kernel(T: int, num_heads: int, interpret: bool):
  """One causal splash-attention kernel over [N, T, H] (its mask tables are built once per shape)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
  block = _splash_block(T)
  sizes = kernel_lib.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                                block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                                block_q_dq=block, block_kv_dq=block)
  mask = mask_lib.MultiHeadMask([mask_lib.CausalMask((T, T)) for _ in range(num_heads)])
  return kernel_lib.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)


def _splash(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, interpret: bool):
  """The splash kernel per device: under a train step's mesh it runs inside shard_map over the batch
  and head axes' mesh axes (a Pallas kernel cannot be partitioned by XLA), each device on its own
  sequences and heads. The kernel does not scale: q is scaled by 1/√H first, in its own dtype."""
  T = q_BxTxNxH.shape[1]
  active = sharding.active()

  def local(q, k, v):
    kernel = _splash_kernel(T, q.shape[2], interpret)
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    out_BxNxTxH = jax.vmap(kernel)(_head_major(q), _head_major(k), _head_major(v))
    return _head_major(out_BxNxTxH)

  if active is None:
    return local(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH)
  mesh, rules = active
  spec = sharding.logical_to_spec(('batch', None, 'heads', None), rules)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH)
