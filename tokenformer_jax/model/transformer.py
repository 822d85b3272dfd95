"""The TokenFormer decoder (reference GPU layout) and the dense Transformer baseline.

Block (pre-norm, both kinds):  x += O(MHA(Q(LN(x)), K(LN(x)), V(LN(x))));  x += FFN(LN(x))
- TokenFormer: Q, K, V, O are Pattentions d→d with n_qkv, n_qkv, n_qkv, n_proj tokens; the FFN is ONE
  Pattention d→d with n_ffn tokens.
- dense: Q, K, V, O are linear d→d; the FFN is linear d→mlp_dim, exact GELU, linear mlp_dim→d.
Block LayerNorms have no scale or bias; the final LayerNorm has both. No biases anywhere else. Rotary on
the first rotary_pct of each head's dims (GPT-NeoX rotate_half layout). Tied embedding: logits = h Eᵀ.

Layers are stacked on a leading 'layers' axis (nnx.vmap at init) and run with nnx.scan, so compile time
does not grow with depth (model.scan_unroll > 1 unrolls it, the CPU default); the remat policy wraps the
scanned block.

Inference adds a KV-cached path (`Decoder.init_cache`, `Decoder.extend`, `Block.cached`) built from the
same projection, rotary, norm and FFN code as training; only the attention call differs (cache + mask
instead of is_causal), so the two paths compute the same function.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from tokenformer_jax.model import attention
from tokenformer_jax.model.pattention import EMBED_AXIS, Pattention, gelu, logical_param, wang_std
from tokenformer_jax.runtime import sharding

# The residual stream [B, T, D]: batch split over the data axes, the rest whole on each device.
ACTIVATION_AXES = ('batch', None, None)

# The parameter-token tables, by the config key that sets their token count (model.n_<group>): group →
# the Block attributes holding a Pattention of that many tokens. Growth, freezing and import find the
# tables through this (`token_group`), nowhere else.
TOKEN_GROUPS = {'qkv': ('query', 'key', 'value'), 'proj': ('proj',), 'ffn': ('mlp',)}
TOKEN_TABLES = ('key_tokens', 'value_tokens')     # each Pattention's two tables, [L, n, d] when stacked


def token_group(path: tuple[str, ...]) -> str | None:
  """The group of the token table at this params path (('blocks', 'mlp', 'key_tokens') → 'ffn'), or
  None for any other parameter."""
  if len(path) < 2 or path[-1] not in TOKEN_TABLES:
    return None
  return next((group for group, layers in TOKEN_GROUPS.items() if path[-2] in layers), None)


def token_counts(m) -> dict[str, int]:
  """{'qkv': n_qkv, 'proj': n_proj, 'ffn': n_ffn} of a model config."""
  return {group: int(m[f'n_{group}']) for group in TOKEN_GROUPS}

REMAT = {
    'none': None,
    'block': jax.checkpoint_policies.nothing_saveable,
    'save_matmuls': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """Non-affine LayerNorm over the last axis, computed in float32."""
  return _layer_norm_forward(x, eps)[0]


def _layer_norm_forward(x, eps):
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  centered = x32 - mean
  inv_std = jax.lax.rsqrt(jnp.mean(jnp.square(centered), axis=-1, keepdims=True) + eps)
  y = centered * inv_std
  return y, (y, inv_std, jnp.zeros((0,), x.dtype))   # the last: x's dtype, for the cotangent


def _layer_norm_backward(eps, saved, dy):
  """dx = (dy − mean(dy) − ŷ·mean(dy·ŷ)) / σ: two row reductions, where autodiff of the forward takes
  more passes (it differentiates the mean and the variance separately)."""
  del eps
  y, inv_std, like_x = saved
  dy = dy.astype(y.dtype)
  mean_dy = jnp.mean(dy, axis=-1, keepdims=True)
  mean_dy_y = jnp.mean(dy * y, axis=-1, keepdims=True)
  return ((dy - mean_dy - y * mean_dy_y) * inv_std).astype(like_x.dtype),


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


def rotary_tables(positions_BxT: jax.Array, rot_dim: int, base: float):
  """cos/sin [B, T, rot_dim] in float32, halves layout (frequencies repeated, not interleaved)."""
  inv_freq = 1.0 / (base ** (jnp.arange(0, rot_dim, 2, dtype=jnp.float32) / rot_dim))
  angles_BxTxR2 = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
  angles_BxTxR = jnp.concatenate([angles_BxTxR2, angles_BxTxR2], axis=-1)
  return jnp.cos(angles_BxTxR), jnp.sin(angles_BxTxR)


def apply_rotary(x_BxTxNxH: jax.Array, cos_BxTxR: jax.Array, sin_BxTxR: jax.Array) -> jax.Array:
  """Rotates the first R dims of each head (GPT-NeoX rotate_half); the rest pass through."""
  rot_dim = cos_BxTxR.shape[-1]
  if rot_dim == 0:
    return x_BxTxNxH
  x_rot, x_pass = x_BxTxNxH[..., :rot_dim], x_BxTxNxH[..., rot_dim:]
  half = rot_dim // 2
  rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
  cos, sin = cos_BxTxR[:, :, None, :], sin_BxTxR[:, :, None, :]
  x_rot = (x_rot.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x_BxTxNxH.dtype)
  return jnp.concatenate([x_rot, x_pass], axis=-1)


class Linear(nnx.Module):
  """Bias-free linear layer with a [d_in, d_out] kernel carrying logical axis names."""

  def __init__(self, d_in, d_out, std, axes, *, dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    self.kernel = logical_param(std * jax.random.normal(rngs.params(), (d_in, d_out), jnp.float32),
                                axes)

  def __call__(self, x):
    # tokens flattened to one axis, as in pattention: the kernel gradient then contracts one axis
    x_MxI = x.reshape(-1, x.shape[-1]).astype(self.dtype)
    y_MxO = x_MxI @ self.kernel[...].astype(self.dtype)
    return y_MxO.reshape(*x.shape[:-1], y_MxO.shape[-1])


def _value_std(m):
  return m.value_init_std or wang_std(m.num_layers, m.d_model)


def _projection(m, num_tokens, n_ref, std, axes, *, rngs):
  """A d→d projection: Pattention for TokenFormer, Linear (init std, logical axes) for dense."""
  dtype = jnp.dtype(m.dtype)
  if m.kind == 'tokenformer':
    return Pattention(m.d_model, m.d_model, num_tokens, key_std=m.key_init_std, value_std=_value_std(m),
                      n_ref=n_ref or None, dtype=dtype, gelu_impl=m.gelu_impl, rngs=rngs)
  return Linear(m.d_model, m.d_model, std, axes, dtype=dtype, rngs=rngs)


class DenseMLP(nnx.Module):
  """The dense baseline's FFN: linear → exact GELU → linear."""

  def __init__(self, m, *, rngs: nnx.Rngs):
    width = m.mlp_dim or 4 * m.d_model
    dtype = jnp.dtype(m.dtype)
    self.gelu_impl = m.gelu_impl
    self.up = Linear(m.d_model, width, m.key_init_std, (EMBED_AXIS, 'mlp'), dtype=dtype, rngs=rngs)
    self.down = Linear(width, m.d_model, _value_std(m), ('mlp', EMBED_AXIS), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.down(gelu(self.up(x), self.gelu_impl))


class Block(nnx.Module):
  """One pre-norm decoder block (TokenFormer or dense, by m.kind)."""

  def __init__(self, m: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.eps = m.ln_eps
    self.num_heads = m.num_heads
    self.head_dim = m.d_model // m.num_heads
    self.dtype = jnp.dtype(m.dtype)
    self.attention_impl = m.attention_impl
    in_std, out_std = m.key_init_std, _value_std(m)
    qkv_axes, proj_axes = (EMBED_AXIS, 'heads'), ('heads', EMBED_AXIS)
    self.query = _projection(m, m.n_qkv, m.n_ref_qkv, in_std, qkv_axes, rngs=rngs)
    self.key = _projection(m, m.n_qkv, m.n_ref_qkv, in_std, qkv_axes, rngs=rngs)
    self.value = _projection(m, m.n_qkv, m.n_ref_qkv, in_std, qkv_axes, rngs=rngs)
    self.proj = _projection(m, m.n_proj, m.n_ref_proj, out_std, proj_axes, rngs=rngs)
    if m.kind == 'tokenformer':
      self.mlp = Pattention(m.d_model, m.d_model, m.n_ffn, key_std=m.key_init_std, value_std=out_std,
                            n_ref=m.n_ref_ffn or None, dtype=self.dtype, gelu_impl=m.gelu_impl,
                            rngs=rngs)
    else:
      self.mlp = DenseMLP(m, rngs=rngs)

  def _attention_inputs(self, x_BxTxD, cos_BxTxR, sin_BxTxR):
    """q, k, v [B, T, N, H] of LN(x), rotary applied to q and k: shared by the full and cached paths."""
    B, T, _ = x_BxTxD.shape
    h = layer_norm(x_BxTxD, self.eps).astype(self.dtype)
    heads = lambda y: y.reshape(B, T, self.num_heads, self.head_dim)
    q_BxTxNxH = apply_rotary(heads(self.query(h)), cos_BxTxR, sin_BxTxR)
    k_BxTxNxH = apply_rotary(heads(self.key(h)), cos_BxTxR, sin_BxTxR)
    v_BxTxNxH = heads(self.value(h))
    return q_BxTxNxH, k_BxTxNxH, v_BxTxNxH

  def _after_attention(self, x_BxTxD, attn_BxTxNxH):
    """x + O(attn), then the FFN residual: shared by the full and cached paths."""
    B, T, D = x_BxTxD.shape
    x_BxTxD = x_BxTxD + self.proj(attn_BxTxNxH.reshape(B, T, D)).astype(x_BxTxD.dtype)
    h = layer_norm(x_BxTxD, self.eps).astype(self.dtype)
    return sharding.constrain(x_BxTxD + self.mlp(h).astype(x_BxTxD.dtype), ACTIVATION_AXES)

  def __call__(self, x_BxTxD, cos_BxTxR, sin_BxTxR):
    q_BxTxNxH, k_BxTxNxH, v_BxTxNxH = self._attention_inputs(x_BxTxD, cos_BxTxR, sin_BxTxR)
    attn_BxTxNxH = attention.causal_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, self.attention_impl)
    return self._after_attention(x_BxTxD, attn_BxTxNxH)

  def cached(self, x_BxTxD, cos_BxTxR, sin_BxTxR, k_BxSxNxH, v_BxSxNxH, starts_B, mask_BxTxS):
    """The block over T new tokens per row, written into this layer's cache at slots starts_B + t;
    the new tokens attend to the cache slots mask_BxTxS allows. Returns (x, k cache, v cache).

    The attention implementation is left to XLA: model.attention_impl picks a kernel for the causal
    training shapes, which need not accept an arbitrary mask over a longer cache."""
    q_BxTxNxH, k_BxTxNxH, v_BxTxNxH = self._attention_inputs(x_BxTxD, cos_BxTxR, sin_BxTxR)
    write = jax.vmap(lambda cache, new, start: jax.lax.dynamic_update_slice_in_dim(cache, new, start, 0))
    k_BxSxNxH = write(k_BxSxNxH, k_BxTxNxH.astype(k_BxSxNxH.dtype), starts_B)
    v_BxSxNxH = write(v_BxSxNxH, v_BxTxNxH.astype(v_BxSxNxH.dtype), starts_B)
    attn_BxTxNxH = jax.nn.dot_product_attention(
        q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, scale=self.head_dim ** -0.5, mask=mask_BxTxS[:, None])
    return self._after_attention(x_BxTxD, attn_BxTxNxH), k_BxSxNxH, v_BxSxNxH


class KVCache(NamedTuple):
  """Keys and values of every layer for the tokens seen so far, and how many each row holds.

  Slot s of row b holds the token at position s of that row, so rotary positions are the true ones and
  rows of a batch may hold different lengths (prompts are right-padded: the padding's slots lie past the
  row's length, are hidden by the mask, and are overwritten by the row's next tokens).
  """
  k_LxBxSxNxH: jax.Array
  v_LxBxSxNxH: jax.Array
  lengths_B: jax.Array       # int32: valid slots per row (the position of the row's next token)


class Decoder(nnx.Module):
  """Embedding → scanned blocks → final affine LayerNorm → tied output head."""

  def __init__(self, m: ml_collections.ConfigDict, vocab_size: int, *, rngs: nnx.Rngs):
    self.eps = m.ln_eps
    self.dtype = jnp.dtype(m.dtype)
    self.remat = m.remat
    self.scan_unroll = m.scan_unroll or 1
    self.num_layers = m.num_layers
    self.num_heads = m.num_heads
    self.head_dim = m.d_model // m.num_heads
    self.rot_dim = int(m.d_model // m.num_heads * m.rotary_pct) // 2 * 2
    self.rotary_base = m.rotary_base
    self.embedding = logical_param(
        m.embed_init_std * jax.random.normal(rngs.params(), (vocab_size, m.d_model), jnp.float32),
        ('vocab', EMBED_AXIS))

    @nnx.split_rngs(splits=m.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
    def make_blocks(rngs):
      return Block(m, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.final_norm_scale = logical_param(jnp.ones((m.d_model,), jnp.float32), ('norm',))
    self.final_norm_bias = logical_param(jnp.zeros((m.d_model,), jnp.float32), ('norm',))

  def _embed(self, tokens_BxT):
    return jnp.take(self.embedding[...], tokens_BxT, axis=0).astype(self.dtype)

  def _logits(self, x_BxTxD):
    """Final affine LayerNorm and the tied head: logits [B, T, V] in float32."""
    h = layer_norm(x_BxTxD, self.eps) * self.final_norm_scale[...] + self.final_norm_bias[...]
    logits_BxTxV = jnp.einsum('btd,vd->btv', h.astype(self.dtype), self.embedding[...].astype(self.dtype))
    return logits_BxTxV.astype(jnp.float32)

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None) -> jax.Array:
    """Logits [B, T, V] in float32."""
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    cos_BxTxR, sin_BxTxR = rotary_tables(positions_BxT, self.rot_dim, self.rotary_base)
    x_BxTxD = sharding.constrain(self._embed(tokens_BxT), ACTIVATION_AXES)

    policy = REMAT[self.remat]

    def run_block(x, block):
      return block(x, cos_BxTxR, sin_BxTxR)

    if self.remat != 'none':
      run_block = nnx.remat(run_block, policy=policy)
    x_BxTxD = nnx.scan(run_block, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
                       unroll=self.scan_unroll)(x_BxTxD, self.blocks)
    return self._logits(x_BxTxD)

  def init_cache(self, batch: int, max_len: int) -> KVCache:
    """An empty cache of max_len slots per row, in the compute dtype."""
    shape = (self.num_layers, batch, max_len, self.num_heads, self.head_dim)
    return KVCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype),
                   jnp.zeros((batch,), jnp.int32))

  def extend(self, tokens_BxT: jax.Array, cache: KVCache,
             num_new_B: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """Feeds T tokens per row at positions lengths_B + t; returns the logits [B, V] (float32) of each
    row's last new token and the cache with num_new_B (default T) more valid slots per row.

    Prefill: an empty cache and right-padded prompts with num_new_B = the prompt lengths. Decode: one
    token per row (num_new_B = 0 keeps a finished row where it is). The caller keeps
    lengths_B + T <= cache slots (a write past the end would be shifted back by XLA's clamping).
    """
    B, T = tokens_BxT.shape
    if num_new_B is None:
      num_new_B = jnp.full((B,), T, jnp.int32)
    positions_BxT = cache.lengths_B[:, None] + jnp.arange(T, dtype=jnp.int32)
    cos_BxTxR, sin_BxTxR = rotary_tables(positions_BxT, self.rot_dim, self.rotary_base)
    slots_S = jnp.arange(cache.k_LxBxSxNxH.shape[2], dtype=jnp.int32)
    mask_BxTxS = slots_S[None, None, :] <= positions_BxT[:, :, None]
    x_BxTxD = self._embed(tokens_BxT)

    def run_block(x, block, k_cache, v_cache):
      x, k_cache, v_cache = block.cached(x, cos_BxTxR, sin_BxTxR, k_cache, v_cache, cache.lengths_B,
                                         mask_BxTxS)
      return x, (k_cache, v_cache)

    x_BxTxD, (k_cache, v_cache) = nnx.scan(run_block, in_axes=(nnx.Carry, 0, 0, 0),
                                           out_axes=(nnx.Carry, 0))(
        x_BxTxD, self.blocks, cache.k_LxBxSxNxH, cache.v_LxBxSxNxH)
    last_B = jnp.clip(num_new_B - 1, 0, T - 1)
    x_Bx1xD = jnp.take_along_axis(x_BxTxD, last_B[:, None, None], axis=1)
    logits_BxV = self._logits(x_Bx1xD)[:, 0]
    return logits_BxV, KVCache(k_cache, v_cache, cache.lengths_B + num_new_B.astype(jnp.int32))


def build(m: ml_collections.ConfigDict, vocab_size: int, seed: int) -> Decoder:
  """Builds a model from a resolved model config (config.resolve_model); logical axis names are
  metadata only (placement is done by sharding.py)."""
  with nnx.use_eager_sharding(False):
    return Decoder(m, vocab_size, rngs=nnx.Rngs(params=seed))


def abstract_model(m: ml_collections.ConfigDict, vocab_size: int) -> Decoder:
  """The model with ShapeDtypeStruct leaves: shapes and axis names, nothing allocated."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: Decoder(m, vocab_size, rngs=nnx.Rngs(params=0)))


def nonembedding_params(m: ml_collections.ConfigDict) -> int:
  """Closed form of everything but the embedding: 2·d·(3·n_qkv + n_proj + n_ffn)·L + 2·d for TokenFormer,
  (4·d² + 2·d·mlp_dim)·L + 2·d for dense (the 2·d is the final LayerNorm)."""
  d, L = m.d_model, m.num_layers
  if m.kind == 'tokenformer':
    per_layer = 2 * d * (3 * m.n_qkv + m.n_proj + m.n_ffn)
  else:
    per_layer = 4 * d * d + 2 * d * (m.mlp_dim or 4 * d)
  return per_layer * L + 2 * d


def dense_mlp_dim_matching(m: ml_collections.ConfigDict) -> int:
  """The dense baseline's mlp_dim with TokenFormer m's non-embedding parameters:
  4·d² + 2·d·mlp = 2·d·(3·n_qkv + n_proj + n_ffn)."""
  width = 3 * m.n_qkv + m.n_proj + m.n_ffn - 2 * m.d_model
  if width <= 0:
    raise ValueError(f'too few parameter tokens for a dense model of equal size (mlp_dim {width})')
  return width
