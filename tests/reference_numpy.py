"""An independent NumPy implementation of the reference TokenFormer forward pass, for parity tests.

Written from the reference semantics (shared/REFERENCE.md), not from our JAX code: float64 by default,
loops over layers, explicit causal mask, erf GELU through math.erf.
"""
import math

import numpy as np

_erf = np.vectorize(math.erf)


def gelu(x):
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def pattention(x, key_tokens, value_tokens, n_ref=None):
  scores = x @ key_tokens.T
  norm = np.sqrt(np.sum(scores * scores, axis=-1, keepdims=True))
  tau = math.sqrt(key_tokens.shape[0] if n_ref is None else n_ref)
  with np.errstate(invalid='ignore', divide='ignore'):
    scaled = np.where(norm > 0, scores * tau / np.where(norm > 0, norm, 1.0), 0.0)
  return gelu(scaled) @ value_tokens


def layer_norm(x, eps=1e-5, scale=None, bias=None):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  y = (x - mu) / np.sqrt(var + eps)
  return y if scale is None else y * scale + bias


def rotary(x_TxNxH, rot_dim, base=10000.0):
  """GPT-NeoX rotate_half on the first rot_dim dims of each head, positions 0..T-1."""
  T = x_TxNxH.shape[0]
  inv_freq = 1.0 / base ** (np.arange(0, rot_dim, 2) / rot_dim)
  freqs = np.outer(np.arange(T), inv_freq)
  emb = np.concatenate([freqs, freqs], -1)[:, None, :]
  x_rot, x_pass = x_TxNxH[..., :rot_dim], x_TxNxH[..., rot_dim:]
  half = rot_dim // 2
  rotate_half = np.concatenate([-x_rot[..., half:], x_rot[..., :half]], -1)
  return np.concatenate([x_rot * np.cos(emb) + rotate_half * np.sin(emb), x_pass], -1)


def forward(params, tokens_T, num_heads, rotary_pct=0.25, n_refs=(None, None, None), eps=1e-5):
  """Logits [T, V] of a TokenFormer with the reference layout; params as our pure dict (NumPy)."""
  emb = params['embedding']
  x = emb[tokens_T]
  T, D = x.shape
  H = D // num_heads
  rot_dim = int(H * rotary_pct) // 2 * 2
  blocks = params['blocks']
  L = blocks['query']['key_tokens'].shape[0]
  n_ref_qkv, n_ref_proj, n_ref_ffn = n_refs
  mask = np.tril(np.ones((T, T), bool))
  for i in range(L):
    p = {name: (blocks[name]['key_tokens'][i], blocks[name]['value_tokens'][i])
         for name in ('query', 'key', 'value', 'proj', 'mlp')}
    h = layer_norm(x, eps)
    q = rotary(pattention(h, *p['query'], n_ref_qkv).reshape(T, num_heads, H), rot_dim)
    k = rotary(pattention(h, *p['key'], n_ref_qkv).reshape(T, num_heads, H), rot_dim)
    v = pattention(h, *p['value'], n_ref_qkv).reshape(T, num_heads, H)
    scores = np.einsum('qnh,knh->nqk', q, k) / math.sqrt(H)
    scores = np.where(mask[None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = np.einsum('nqk,knh->qnh', probs, v).reshape(T, D)
    x = x + pattention(attn, *p['proj'], n_ref_proj)
    x = x + pattention(layer_norm(x, eps), *p['mlp'], n_ref_ffn)
  h = layer_norm(x, eps, params['final_norm_scale'], params['final_norm_bias'])
  return h @ emb.T
