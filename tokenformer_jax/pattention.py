"""Pattention: token-parameter attention, the layer TokenFormer uses instead of every linear projection.

Input tokens attend to n learnable parameter tokens (keys K_P [n, d_in], values V_P [n, d_out]):

  A = x K_Pᵀ                            (no scale, no bias)
  Θ(A) = GELU_exact(A · τ / ‖A‖₂)       (L2 norm over the n axis, per input token; τ = √n)
  y = Θ(A) V_P

Equivalently a d_in → n → d_out MLP whose hidden pre-activations pass through a parameter-free RMS norm
(A·√n/‖A‖ = A / RMS_n(A)). τ is recomputed from the current n (the reference behaviour) unless the layer
is given a fixed `n_ref`: growth that must preserve the function freezes τ at the pre-growth count.

The norm is taken in float32 even for bf16 activations. Over a token axis sharded across devices the sum of
squares is a cross-device reduction that XLA inserts, so the result stays exact.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

# Logical axis names of the parameter tables; `sharding.py` maps them to mesh axes via config rules.
TOKENS_AXIS = 'param_tokens'
EMBED_AXIS = 'embed'


def pattention(x: jax.Array, key_tokens: jax.Array, value_tokens: jax.Array,
               n_ref: Optional[int] = None) -> jax.Array:
  """Pure Pattention: x [..., d_in], key_tokens [n, d_in], value_tokens [n, d_out] → [..., d_out].

  Computes in x's dtype (tables are cast to it); the norm and GELU run in at least float32. A row whose scores are
  all zero (e.g. an all-zero input token) has no direction to normalise: it yields zeros instead of the
  reference's NaN, and its gradient is zero too.
  """
  n = key_tokens.shape[0]
  if value_tokens.shape[0] != n:
    raise ValueError(f'key_tokens has {n} tokens but value_tokens has {value_tokens.shape[0]}')
  norm_dtype = jnp.promote_types(x.dtype, jnp.float32)  # at least float32; float64 stays float64
  tau = jnp.sqrt(jnp.asarray(n if n_ref is None else n_ref, norm_dtype))
  scores = jnp.einsum('...d,nd->...n', x, key_tokens.astype(x.dtype)).astype(norm_dtype)
  sumsq = jnp.sum(jnp.square(scores), axis=-1, keepdims=True)
  nonzero = sumsq > 0
  inv_norm = jax.lax.rsqrt(jnp.where(nonzero, sumsq, 1.0))
  weights = jax.nn.gelu(scores * jnp.where(nonzero, tau * inv_norm, 0.0), approximate=False)
  return jnp.einsum('...n,nd->...d', weights.astype(x.dtype), value_tokens.astype(x.dtype))


def logical_param(value: jax.Array, axes: tuple) -> nnx.Param:
  """A Param tagged with logical axis names; placement is left to sharding.py (no eager sharding)."""
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def wang_std(num_layers: int, d_model: int) -> float:
  """The reference's value-token init scale 2 / (L·√d) ("wang init")."""
  return 2.0 / (num_layers * d_model ** 0.5)


class Pattention(nnx.Module):
  """Pattention layer holding its key and value parameter tokens.

  Both tables are [n, d] with logical axes (param_tokens, embed), so the token axis can be sharded.
  `n_ref` freezes τ = √n_ref (None: τ = √n of the current table).
  """

  def __init__(self, d_in: int, d_out: int, num_tokens: int, *, key_std: float, value_std: float,
               n_ref: Optional[int] = None, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if num_tokens <= 0:
      raise ValueError(f'num_tokens must be positive, got {num_tokens}')
    self.n_ref = n_ref
    self.dtype = dtype
    axes = (TOKENS_AXIS, EMBED_AXIS)
    self.key_tokens = logical_param(
        key_std * jax.random.normal(rngs.params(), (num_tokens, d_in), param_dtype), axes)
    self.value_tokens = logical_param(
        value_std * jax.random.normal(rngs.params(), (num_tokens, d_out), param_dtype), axes)

  def __call__(self, x: jax.Array) -> jax.Array:
    return pattention(x.astype(self.dtype), self.key_tokens[...], self.value_tokens[...], self.n_ref)
