"""The reference TokenFormer Pile models (paper Table 1): --config=experiments/pile.py:150m.

Sizes: 150m, 450m, 900m, 1.5b. Global batch 1024 × 2048 tokens, 143k steps, and the rest of the paper's
Pile setup (experiments/common.py). Prepare the Pile once with the released models' tokenizer,
  python -m tokenformer_jax.prepare --corpus='pile/train/*.jsonl.zst' --prepared=DIR \
      --tokenizer=20B_tokenizer.json --val_fraction=0.0005 [-- BEAM_OPTIONS]
and train with --config.data.prepared=DIR.
"""
from tokenformer_jax.config import base_config, experiment_beside

common = experiment_beside(__file__, 'common.py')

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
  return common.pile_training(c, batch_size=1024, steps=143_000)
