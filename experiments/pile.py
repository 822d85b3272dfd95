"""The reference TokenFormer Pile models (paper Table 1): --config=experiments/pile.py:150m.

Sizes: 150m, 450m, 900m, 1.5b. GPT-NeoX-20B vocab (50,277 ids padded to 50,304), sequence 2048, global
batch 1024 × 2048 tokens, 143k steps, AdamW 6e-4 (β 0.9/0.95, eps 1e-8, wd 0.1), 1% warmup, cosine to
6e-5, clip 1.0; bf16 compute with f32 parameters. Point --config.data.corpus at the training text and
--config.data.tokenizer at a sentencepiece model with that vocabulary.
"""
from tokenformer_jax.config import base_config

# layers, d_model, heads, n_qkv, n_proj, n_ffn
SIZES = {
    '150m': (12, 768, 12, 768, 768, 3072),
    '450m': (24, 1024, 16, 1024, 1024, 4096),
    '900m': (32, 1280, 16, 1280, 1280, 5120),
    '1.5b': (40, 1536, 16, 1536, 1536, 6144),
}


def get_config(size: str = '150m'):
  if size not in SIZES:
    raise ValueError(f'unknown size {size!r}; choose one of {sorted(SIZES)}')
  c = base_config()
  m = c.model
  m.num_layers, m.d_model, m.num_heads, m.n_qkv, m.n_proj, m.n_ffn = SIZES[size]
  m.vocab_size = 50304
  m.dtype = 'bfloat16'
  m.remat = 'block'
  c.data.vocab_size = 50277
  c.data.seq_len = 2048
  c.train.batch_size = 1024
  c.train.steps = 143_000
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.log_every = 50
  c.train.sample_tokens = 0
  c.optimizer.lr = 6e-4
  c.optimizer.min_lr = 6e-5
  c.optimizer.warmup_frac = 0.01
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c
