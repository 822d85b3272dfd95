"""Benchmark shapes beside experiments/tiny.py: --config=experiments/bench.py:b (or m20).

b: 6 layers, d 512, 8 heads, n 512/512/2048, vocab 4096, batch 8 × 256 (27.3M parameters, 354 GFLOP
per step): big enough that the matmuls dominate a CPU step. m20: the same with 4 layers (18.9M).
benchmarks/step.py times each against the dense baseline of equal non-embedding parameters.
"""
from tokenformer_jax.config import base_config

LAYERS = {'b': 6, 'm20': 4}


def get_config(name: str = 'b'):
  if name not in LAYERS:
    raise ValueError(f'unknown benchmark shape {name!r}; choose one of {sorted(LAYERS)}')
  c = base_config()
  m = c.model
  m.num_layers, m.d_model, m.num_heads = LAYERS[name], 512, 8
  m.n_qkv, m.n_proj, m.n_ffn = 512, 512, 2048
  m.vocab_size = 4096
  c.data.seq_len = 256
  c.train.batch_size = 8
  return c
