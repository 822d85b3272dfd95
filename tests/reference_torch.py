"""An independent PyTorch TokenFormer whose state_dict has the released checkpoints' names (GPT-NeoX
sequential form, written from ../shared/REFERENCE.md): what `load_state_dict(strict=True)` of an exported
file is checked against. τ = √n always, as in the reference.

The rotary frequencies are a buffer that the reference's state dict holds only when it is built with its
`rotary_save_freqs_buffer` option (default off: the buffer is registered non-persistent, so its checkpoints
lack it and a strict load refuses it); `save_rotary_buffers` mirrors that option."""
import math

import torch
from torch import nn


class Pattention(nn.Module):

  def __init__(self, n: int, d_in: int, d_out: int):
    super().__init__()
    self.key_param_tokens = nn.Parameter(torch.zeros(n, d_in))
    self.value_param_tokens = nn.Parameter(torch.zeros(n, d_out))

  def forward(self, x):
    scores = x @ self.key_param_tokens.t()
    n = self.key_param_tokens.shape[0]
    scores = scores * (math.sqrt(n) / torch.linalg.vector_norm(scores, dim=-1, keepdim=True))
    return nn.functional.gelu(scores) @ self.value_param_tokens


class Rotary(nn.Module):

  def __init__(self, dim: int, base: float, persistent: bool):
    super().__init__()
    self.register_buffer('inv_freq', 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim),
                         persistent=persistent)


class Attention(nn.Module):

  def __init__(self, m, save_rotary_buffers: bool):
    super().__init__()
    d = m.d_model
    self.query, self.key, self.value = (Pattention(m.n_qkv, d, d) for _ in range(3))
    self.proj = Pattention(m.n_proj, d, d)
    self.heads, self.head_dim = m.num_heads, d // m.num_heads
    self.rot = int(self.head_dim * m.rotary_pct) // 2 * 2
    self.rotary_emb = Rotary(self.rot, m.rotary_base, save_rotary_buffers)

  def _rotate(self, x, cos, sin):
    r, half = self.rot, self.rot // 2
    x_rot, x_pass = x[..., :r], x[..., r:]
    turned = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    return torch.cat([x_rot * cos + turned * sin, x_pass], dim=-1)

  def forward(self, h):
    B, T, d = h.shape
    angles = torch.arange(T, dtype=torch.float32)[:, None] * self.rotary_emb.inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos()[None, None], angles.sin()[None, None]
    split = lambda y: y.view(B, T, self.heads, self.head_dim).transpose(1, 2)
    q = self._rotate(split(self.query(h)), cos, sin)
    k = self._rotate(split(self.key(h)), cos, sin)
    out = nn.functional.scaled_dot_product_attention(q, k, split(self.value(h)), is_causal=True)
    return self.proj(out.transpose(1, 2).reshape(B, T, d))


class Layer(nn.Module):

  def __init__(self, m, save_rotary_buffers: bool):
    super().__init__()
    self.eps = m.ln_eps
    self.attention = Attention(m, save_rotary_buffers)
    self.mlp = Pattention(m.n_ffn, m.d_model, m.d_model)

  def forward(self, x):
    d = x.shape[-1]
    x = x + self.attention(nn.functional.layer_norm(x, (d,), eps=self.eps))
    return x + self.mlp(nn.functional.layer_norm(x, (d,), eps=self.eps))


class Embedding(nn.Module):

  def __init__(self, vocab: int, d: int):
    super().__init__()
    self.word_embeddings = nn.Embedding(vocab, d)

  def forward(self, tokens):
    return self.word_embeddings(tokens)


class Norm(nn.Module):

  def __init__(self, d: int, eps: float):
    super().__init__()
    self.norm = nn.LayerNorm(d, eps=eps)

  def forward(self, x):
    return self.norm(x)


class TokenFormer(nn.Module):
  """sequential: 0 embedding, 1 (no parameters), 2..L+1 layers, L+2 (no parameters), L+3 final norm."""

  def __init__(self, m, vocab: int, save_rotary_buffers: bool = False):
    super().__init__()
    self.sequential = nn.Sequential(Embedding(vocab, m.d_model), nn.Identity(),
                                    *(Layer(m, save_rotary_buffers) for _ in range(m.num_layers)),
                                    nn.Identity(),
                                    Norm(m.d_model, m.ln_eps))

  def forward(self, tokens):
    h = self.sequential(tokens)
    return h @ self.sequential[0].word_embeddings.weight.t()   # tied head
