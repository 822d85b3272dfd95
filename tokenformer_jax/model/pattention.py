"""Pattention: token-parameter attention, the layer TokenFormer uses instead of every linear projection.

Input tokens attend to n learnable parameter tokens (keys K_P [n, d_in], values V_P [n, d_out]):

  A = x K_Pᵀ                            (no scale, no bias)
  Θ(A) = GELU_exact(A · τ / ‖A‖₂)       (L2 norm over the n axis, per input token; τ = √n)
  y = Θ(A) V_P

Equivalently a d_in → n → d_out MLP whose hidden pre-activations pass through a parameter-free RMS norm
(A·√n/‖A‖ = A / RMS_n(A)). τ is recomputed from the current n (the reference behaviour) unless the layer
is given a fixed `n_ref`: growth that must preserve the function freezes τ at the pre-growth count.

The norm is taken in float32 even for bf16 activations. Over a token axis sharded across devices the sum of
squares is a cross-device reduction that XLA inserts, so the result stays exact. GELU is exact in either of
two forms (`gelu_impl`, resolved per platform by config.resolve_model).
"""
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

# Logical axis names of the parameter tables; `sharding.py` maps them to mesh axes via config rules.
TOKENS_AXIS = 'param_tokens'
EMBED_AXIS = 'embed'


def pattention(x: jax.Array, key_tokens: jax.Array, value_tokens: jax.Array,
               n_ref: Optional[int] = None, gelu_impl: str = 'erf') -> jax.Array:
  """Pure Pattention: x [..., d_in], key_tokens [n, d_in], value_tokens [n, d_out] → [..., d_out].

  Computes in x's dtype (tables are cast to it); the norm and GELU run in at least float32. A row whose scores are
  all zero (e.g. an all-zero input token) has no direction to normalise: it yields zeros instead of the
  reference's NaN, and its gradient is zero too.
  """
  n = key_tokens.shape[0]
  if value_tokens.shape[0] != n:
    raise ValueError(f'key_tokens has {n} tokens but value_tokens has {value_tokens.shape[0]}')
  tau = float(n if n_ref is None else n_ref) ** 0.5
  # Tokens flattened to one axis: the weight gradients then contract one axis, not (batch, seq).
  x_MxI = x.reshape(-1, x.shape[-1])
  y_MxO = _pattention_2d(x_MxI, key_tokens.astype(x.dtype), value_tokens.astype(x.dtype), tau, gelu_impl)
  return y_MxO.reshape(*x.shape[:-1], value_tokens.shape[1])


def _norm_dtype(dtype):
  return jnp.promote_types(dtype, jnp.float32)   # at least float32; float64 stays float64


def _inverse_norm(scores_MxN: jax.Array) -> jax.Array:
  """1 / ‖scores‖₂ over the token axis, [M, 1] in the norm dtype; 0 for an all-zero row."""
  s = scores_MxN.astype(_norm_dtype(scores_MxN.dtype))
  sumsq = jnp.sum(jnp.square(s), axis=-1, keepdims=True)
  nonzero = sumsq > 0
  return jnp.where(nonzero, jax.lax.rsqrt(jnp.where(nonzero, sumsq, 1.0)), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _pattention_2d(x_MxI, keys_NxI, values_NxO, tau, gelu_impl):
  return _forward(x_MxI, keys_NxI, values_NxO, tau, gelu_impl)[0]


def _forward(x_MxI, keys_NxI, values_NxO, tau, gelu_impl):
  """The forward pass. Saves the scores (in the compute dtype, as the matmul produced them), the inverse
  norms [M, 1] and, when they are stored in at least float32, the GELU outputs the second matmul read:
  the backward recomputes u from the scores and takes Φ(u) from those outputs (see `gelu_grad`)."""
  scores_MxN = x_MxI @ keys_NxI.T
  inv_norm_Mx1 = _inverse_norm(scores_MxN)
  u_MxN = scores_MxN.astype(inv_norm_Mx1.dtype) * (tau * inv_norm_Mx1)
  weights_MxN = gelu(u_MxN, gelu_impl).astype(x_MxI.dtype)
  y_MxO = weights_MxN @ values_NxO
  saved_weights = weights_MxN if _keeps_cdf(weights_MxN.dtype) else None
  return y_MxO, (x_MxI, keys_NxI, values_NxO, scores_MxN, inv_norm_Mx1, saved_weights)


def _backward(tau, gelu_impl, saved, dy_MxO):
  """Hand-written backward of y = GELU(τ·S/‖S‖) V with S = x Kᵀ (u = τ·S/‖S‖, r = 1/‖S‖):

    dG = dy Vᵀ;  du = dG · GELU'(u);  dS = τ·r·(du − r²·S·⟨du, S⟩);  dx = dS K;  dK = dSᵀ x;  dV = Gᵀ dy

  Autodiff of the forward gives the same numbers but keeps more [M, n] intermediates alive and spreads
  the norm's backward over several passes; here it is one fused elementwise pass and one row reduction.
  The reduction is taken against the saved scores S rather than u (⟨du, u⟩ = τ·r·⟨du, S⟩): XLA:CPU
  then feeds it the matmul's output instead of writing u out as one more [M, n] array (fewer
  temporaries and a faster step: docs/performance.md). The backward is the same for either GELU form.
  """
  del gelu_impl
  x_MxI, keys_NxI, values_NxO, scores_MxN, inv_norm_Mx1, saved_weights_MxN = saved
  dtype = x_MxI.dtype
  s_MxN = scores_MxN.astype(inv_norm_Mx1.dtype)
  u_MxN = s_MxN * (tau * inv_norm_Mx1)
  if saved_weights_MxN is None:   # low-precision outputs: Φ(u) is recomputed, and G with it
    weights_MxN = _erf_gelu(u_MxN).astype(dtype)
    gelu_grad_MxN = gelu_grad(u_MxN)
  else:
    weights_MxN = saved_weights_MxN
    gelu_grad_MxN = gelu_grad(u_MxN, weights_MxN)
  du_MxN = (dy_MxO @ values_NxO.T).astype(u_MxN.dtype) * gelu_grad_MxN
  du_dot_s_Mx1 = jnp.sum(du_MxN * s_MxN, axis=-1, keepdims=True)
  dscores_MxN = ((tau * inv_norm_Mx1) *
                 (du_MxN - s_MxN * (jnp.square(inv_norm_Mx1) * du_dot_s_Mx1))).astype(dtype)
  dx_MxI = dscores_MxN @ keys_NxI
  # contractions over the token axis written as such (no explicit transpose for the partitioner to shard)
  dkeys_NxI = jnp.einsum('mn,mi->ni', dscores_MxN, x_MxI)
  dvalues_NxO = jnp.einsum('mn,mo->no', weights_MxN, dy_MxO)
  return dx_MxI, dkeys_NxI, dvalues_NxO


def gelu(u, impl: str):
  """Exact GELU: 'erf' as u·Φ(u) with erf, differentiated by `gelu_grad` from its own output; 'erfc' as
  jax.nn.gelu. Which is faster where is config.resolve_model's choice. The dense baseline's MLP uses it
  too, so the two kinds are compared on the same GELU."""
  if impl == 'erf':
    return _gelu_erf(u)
  if impl == 'erfc':
    return jax.nn.gelu(u, approximate=False)
  raise ValueError(f'unknown GELU implementation {impl!r}')


def _erf_gelu(u):
  return u * _normal_cdf(u)


_gelu_erf = jax.custom_vjp(_erf_gelu)


def _gelu_erf_forward(u):
  y = _erf_gelu(u)
  return y, (u, y if _keeps_cdf(y.dtype) else None)


def _gelu_erf_backward(saved, dy):
  u, y = saved
  return (dy * gelu_grad(u, y).astype(dy.dtype),)


_gelu_erf.defvjp(_gelu_erf_forward, _gelu_erf_backward)


def gelu_grad(u, y=None):
  """GELU'(u) = Φ(u) + u·φ(u). Given the forward's y = u·Φ(u), Φ(u) is taken as y / u instead of a second
  erf: erf then has one consumer and XLA:CPU fuses it into the pass that writes y, where it otherwise
  wrote Φ(u) out as one more array for the backward to read (the measured saving: docs/performance.md).
  y / u is Φ(u) to within 2 ulp of y's precision, so only outputs stored in at least float32 are used
  (`_keeps_cdf`); below |u| = 1e-30, Φ(u) is ½."""
  if y is None:
    cdf = _normal_cdf(u)
  else:
    cdf = jnp.where(jnp.abs(u) > 1e-30, y.astype(u.dtype) / u, 0.5)
  return cdf + u * _INV_SQRT_2PI * jnp.exp(-0.5 * jnp.square(u))


def _keeps_cdf(dtype) -> bool:
  """Whether GELU outputs of this dtype hold Φ(u) precisely enough for `gelu_grad` to divide it out."""
  return jnp.finfo(dtype).bits >= 32


def _normal_cdf(u):
  """Φ(u) via erf: exact GELU is u·Φ(u). (jax.nn.gelu's erfc form is more precise far in the negative
  tail, where GELU is below 1e-20 anyway, and costs a slower kernel.)"""
  return 0.5 * (1.0 + jax.lax.erf(u * _SQRT_HALF))


_SQRT_HALF = 0.5 ** 0.5
_INV_SQRT_2PI = (2.0 * math.pi) ** -0.5
_pattention_2d.defvjp(_forward, _backward)


def logical_param(value: jax.Array, axes: tuple) -> nnx.Param:
  """A Param tagged with logical axis names; placement is left to sharding.py (no eager sharding)."""
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def wang_std(num_layers: int, d_model: int) -> float:
  """The reference's value-token init scale 2 / (L·√d) ("wang init")."""
  return 2.0 / (num_layers * d_model ** 0.5)


class Pattention(nnx.Module):
  """Pattention layer holding its key and value parameter tokens.

  Both tables are [n, d] with logical axes (param_tokens, embed), so the token axis can be sharded.
  `n_ref` freezes τ = √n_ref (None: τ = √n of the current table). Parameters are float32.
  """

  def __init__(self, d_in: int, d_out: int, num_tokens: int, *, key_std: float, value_std: float,
               n_ref: Optional[int] = None, dtype=jnp.float32, gelu_impl: str = 'erf',
               rngs: nnx.Rngs):
    if num_tokens <= 0:
      raise ValueError(f'num_tokens must be positive, got {num_tokens}')
    self.n_ref = n_ref
    self.dtype = dtype
    self.gelu_impl = gelu_impl
    axes = (TOKENS_AXIS, EMBED_AXIS)
    self.key_tokens = logical_param(
        key_std * jax.random.normal(rngs.params(), (num_tokens, d_in), jnp.float32), axes)
    self.value_tokens = logical_param(
        value_std * jax.random.normal(rngs.params(), (num_tokens, d_out), jnp.float32), axes)

  def __call__(self, x: jax.Array) -> jax.Array:
    return pattention(x.astype(self.dtype), self.key_tokens[...], self.value_tokens[...], self.n_ref,
                      self.gelu_impl)
