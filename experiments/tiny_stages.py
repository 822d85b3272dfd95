"""A three-stage growth schedule on the tiny model: 64 → 128 → 256 attention tokens (×4 FFN tokens).

python -m tokenformer_jax.main --config=experiments/tiny_stages.py --workdir=/tmp/stages
Each stage lives in WORKDIR/stage_<i>; rerunning the command continues where it stopped. Growth is
exact (new keys 0, τ frozen) and carries the optimizer state, so the step count goes on: 300 steps
per stage, 900 in all; the last stage ends with a sample.
"""
from tokenformer_jax.config import experiment_beside

tiny = experiment_beside(__file__, 'tiny.py')


def get_config():
  c = tiny.get_config()
  c.stages = (
      {'model.n_qkv': 64, 'model.n_proj': 64, 'model.n_ffn': 256, 'train.steps': 300,
       'train.sample_tokens': 0},
      {'model.n_qkv': 128, 'model.n_proj': 128, 'model.n_ffn': 512, 'train.steps': 600,
       'train.sample_tokens': 0},
      {'model.n_qkv': 256, 'model.n_proj': 256, 'model.n_ffn': 1024, 'train.steps': 900},
  )
  c.growth.policy = 'exact'
  c.growth.optimizer = 'carry'
  c.train.checkpoint_every = 100
  return c
