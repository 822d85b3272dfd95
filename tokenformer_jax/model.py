"""The TokenFormer decoder (reference GPU layout) and the dense Transformer baseline.

Block (pre-norm, both kinds):  x += O(MHA(Q(LN(x)), K(LN(x)), V(LN(x))));  x += FFN(LN(x))
- TokenFormer: Q, K, V, O are Pattentions d→d with n_qkv, n_qkv, n_qkv, n_proj tokens; the FFN is ONE
  Pattention d→d with n_ffn tokens.
- dense: Q, K, V, O are linear d→d; the FFN is linear d→mlp_dim, exact GELU, linear mlp_dim→d.
Block LayerNorms have no scale or bias; the final LayerNorm has both. No biases anywhere else. Rotary on
the first rotary_pct of each head's dims (GPT-NeoX rotate_half layout). Tied embedding: logits = h Eᵀ.

Layers are stacked on a leading 'layers' axis (nnx.vmap at init) and run with nnx.scan, so compile time
does not grow with depth; the remat policy wraps the scanned block.
"""
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from tokenformer_jax.pattention import EMBED_AXIS, Pattention, logical_param, wang_std

REMAT = {
    'none': None,
    'block': jax.checkpoint_policies.nothing_saveable,
    'save_matmuls': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """Non-affine LayerNorm over the last axis, computed in float32."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + eps)


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
    return jnp.einsum('...i,io->...o', x.astype(self.dtype), self.kernel[...].astype(self.dtype))


def _value_std(m):
  return m.value_init_std or wang_std(m.num_layers, m.d_model)


def _projection(m, num_tokens, n_ref, std, axes, *, rngs):
  """A d→d projection: Pattention for TokenFormer, Linear (init std, logical axes) for dense."""
  dtype = jnp.dtype(m.dtype)
  if m.kind == 'tokenformer':
    return Pattention(m.d_model, m.d_model, num_tokens, key_std=m.key_init_std, value_std=_value_std(m),
                      n_ref=n_ref or None, dtype=dtype, rngs=rngs)
  return Linear(m.d_model, m.d_model, std, axes, dtype=dtype, rngs=rngs)


class DenseMLP(nnx.Module):
  """The dense baseline's FFN: linear → exact GELU → linear."""

  def __init__(self, m, *, rngs: nnx.Rngs):
    width = m.mlp_dim or 4 * m.d_model
    dtype = jnp.dtype(m.dtype)
    self.up = Linear(m.d_model, width, m.key_init_std, (EMBED_AXIS, 'mlp'), dtype=dtype, rngs=rngs)
    self.down = Linear(width, m.d_model, _value_std(m), ('mlp', EMBED_AXIS), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.gelu(self.up(x), approximate=False))


class Block(nnx.Module):
  """One pre-norm decoder block (TokenFormer or dense, by m.kind)."""

  def __init__(self, m: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.eps = m.ln_eps
    self.num_heads = m.num_heads
    self.head_dim = m.d_model // m.num_heads
    self.dtype = jnp.dtype(m.dtype)
    self.attention_impl = m.attention_impl or None
    in_std, out_std = m.key_init_std, _value_std(m)
    qkv_axes, proj_axes = (EMBED_AXIS, 'heads'), ('heads', EMBED_AXIS)
    self.query = _projection(m, m.n_qkv, m.n_ref_qkv, in_std, qkv_axes, rngs=rngs)
    self.key = _projection(m, m.n_qkv, m.n_ref_qkv, in_std, qkv_axes, rngs=rngs)
    self.value = _projection(m, m.n_qkv, m.n_ref_qkv, in_std, qkv_axes, rngs=rngs)
    self.proj = _projection(m, m.n_proj, m.n_ref_proj, out_std, proj_axes, rngs=rngs)
    if m.kind == 'tokenformer':
      self.mlp = Pattention(m.d_model, m.d_model, m.n_ffn, key_std=m.key_init_std, value_std=out_std,
                            n_ref=m.n_ref_ffn or None, dtype=self.dtype, rngs=rngs)
    else:
      self.mlp = DenseMLP(m, rngs=rngs)

  def __call__(self, x_BxTxD, cos_BxTxR, sin_BxTxR):
    B, T, D = x_BxTxD.shape
    h = layer_norm(x_BxTxD, self.eps).astype(self.dtype)
    heads = lambda y: y.reshape(B, T, self.num_heads, self.head_dim)
    q_BxTxNxH = apply_rotary(heads(self.query(h)), cos_BxTxR, sin_BxTxR)
    k_BxTxNxH = apply_rotary(heads(self.key(h)), cos_BxTxR, sin_BxTxR)
    v_BxTxNxH = heads(self.value(h))
    attn_BxTxNxH = jax.nn.dot_product_attention(
        q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, scale=self.head_dim ** -0.5, is_causal=True,
        implementation=self.attention_impl)
    x_BxTxD = x_BxTxD + self.proj(attn_BxTxNxH.reshape(B, T, D)).astype(x_BxTxD.dtype)
    h = layer_norm(x_BxTxD, self.eps).astype(self.dtype)
    return x_BxTxD + self.mlp(h).astype(x_BxTxD.dtype)


class Decoder(nnx.Module):
  """Embedding → scanned blocks → final affine LayerNorm → tied output head."""

  def __init__(self, m: ml_collections.ConfigDict, vocab_size: int, *, rngs: nnx.Rngs):
    self.eps = m.ln_eps
    self.dtype = jnp.dtype(m.dtype)
    self.remat = m.remat
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

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None) -> jax.Array:
    """Logits [B, T, V] in float32."""
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    cos_BxTxR, sin_BxTxR = rotary_tables(positions_BxT, self.rot_dim, self.rotary_base)
    embedding_VxD = self.embedding[...]
    x_BxTxD = jnp.take(embedding_VxD, tokens_BxT, axis=0).astype(self.dtype)

    policy = REMAT[self.remat]

    def run_block(x, block):
      return block(x, cos_BxTxR, sin_BxTxR)

    if self.remat != 'none':
      run_block = nnx.remat(run_block, policy=policy)
    x_BxTxD = nnx.scan(run_block, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x_BxTxD, self.blocks)

    h = layer_norm(x_BxTxD, self.eps) * self.final_norm_scale[...] + self.final_norm_bias[...]
    logits_BxTxV = jnp.einsum('btd,vd->btv', h.astype(self.dtype), embedding_VxD.astype(self.dtype))
    return logits_BxTxV.astype(jnp.float32)


def build(m: ml_collections.ConfigDict, vocab_size: int, seed: int) -> Decoder:
  """Builds a model; logical axis names are metadata only (placement is done by sharding.py)."""
  with nnx.use_eager_sharding(False):
    return Decoder(m, vocab_size, rngs=nnx.Rngs(params=seed))


def abstract_model(m: ml_collections.ConfigDict, vocab_size: int) -> Decoder:
  """The model with ShapeDtypeStruct leaves: shapes and axis names, nothing allocated."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: Decoder(m, vocab_size, rngs=nnx.Rngs(params=0)))


def count_params(m: ml_collections.ConfigDict, vocab_size: int) -> int:
  """Number of parameters from abstract shapes."""
  _, params = nnx.split(abstract_model(m, vocab_size), nnx.Param)
  return sum(int(x.size) for x in jax.tree.leaves(params))


def nonembedding_params(m: ml_collections.ConfigDict) -> int:
  """Closed form of everything but the embedding: 2·d·(3·n_qkv + n_proj + n_ffn)·L + 2·d for TokenFormer,
  (4·d² + 2·d·mlp_dim)·L + 2·d for dense (the 2·d is the final LayerNorm)."""
  d, L = m.d_model, m.num_layers
  if m.kind == 'tokenformer':
    per_layer = 2 * d * (3 * m.n_qkv + m.n_proj + m.n_ffn)
  else:
    per_layer = 4 * d * d + 2 * d * (m.mlp_dim or 4 * d)
  return per_layer * L + 2 * d


def expected_params(m: ml_collections.ConfigDict, vocab_size: int) -> int:
  """Closed-form total parameter count (tied embedding counted once)."""
  return nonembedding_params(m) + vocab_size * m.d_model
