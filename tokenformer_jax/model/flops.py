"""FLOPs accounting for MFU: the usual 6·N rule plus the head and the attention scores.

Per trained token: 6·N_nonembed (forward + backward of every projection, Pattention included: its n·d_in
+ n·d_out parameters cost 2 FLOPs each forward like a linear layer's) + 6·d·V (tied output head) +
12·L·d·T (QKᵀ and AV over the full T×T square; causal masking is not discounted, as in PaLM's MFU).
"""
from tokenformer_jax.model.transformer import nonembedding_params


def train_flops_per_token(m, vocab_size: int, seq_len: int) -> float:
  return (6.0 * nonembedding_params(m) + 6.0 * m.d_model * vocab_size
          + 12.0 * m.num_layers * m.d_model * seq_len)
