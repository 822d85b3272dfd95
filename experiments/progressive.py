"""The paper's progressive-scaling family: 12 layers, d 768, 12 heads, growing parameter tokens.

--config=experiments/progressive.py:124m (also 354m, 757m, 1.4b). Attention / FFN tokens per stage:
576 / 2304 ("124M"), 2140 / 8560 ("354M"), 4850 / 19400 ("757M"), 8620 / 34480 ("1.4B"). Training
settings as the Pile models (experiments/common.py), global batch 512 × 2048, 30k steps per stage.
"""
from tokenformer_jax.config import base_config, experiment_beside

common = experiment_beside(__file__, 'common.py')

# attention tokens (q, k, v and the output projection), FFN tokens
STAGES = {'124m': (576, 2304), '354m': (2140, 8560), '757m': (4850, 19400), '1.4b': (8620, 34480)}


def get_config(stage: str = '124m'):
  if stage not in STAGES:
    raise ValueError(f'unknown stage {stage!r}; choose one of {list(STAGES)}')
  c = base_config()
  m = c.model
  m.num_layers, m.d_model, m.num_heads = 12, 768, 12
  m.n_qkv = m.n_proj = STAGES[stage][0]
  m.n_ffn = STAGES[stage][1]
  return common.pile_training(c, batch_size=512, steps=30_000)
