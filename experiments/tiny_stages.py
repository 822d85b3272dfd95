"""Growth schedules on the tiny model, each stage grown from the one before (exactly, optimizer carried).

  python -m tokenformer_jax.main --config=experiments/tiny_stages.py --workdir=/tmp/stages
  python -m tokenformer_jax.main --config=experiments/tiny_stages.py:dims --workdir=/tmp/stages_dims

`tokens` (the default): 64 → 128 → 256 attention tokens (×4 FFN tokens) at tiny's depth and width, 300
steps per stage. `dims`: from an eighth of tiny (2 layers, d 64, 2 heads, 64/64/256 tokens) to tiny
itself, one dimension per stage: deeper (4 layers), then wider (d 128, 4 heads of the same size), then
more tokens (128/128/512). Each stage lives in WORKDIR/stage_<i>; rerunning the command continues where
it stopped. With the optimizer carried the step count goes on, so `train.steps` adds up over the stages;
the last stage ends with a sample.
"""
from tokenformer_jax.config import experiment_beside

tiny = experiment_beside(__file__, 'tiny.py')

_SMALL = {'model.num_layers': 2, 'model.d_model': 64, 'model.num_heads': 2}
_FEW_TOKENS = {'model.n_qkv': 64, 'model.n_proj': 64, 'model.n_ffn': 256}
_QUIET = {'train.sample_tokens': 0}   # the sample only at the end of the last stage

SCHEDULES = {
    'tokens': (
        {**_FEW_TOKENS, 'train.steps': 300, **_QUIET},
        {'model.n_qkv': 128, 'model.n_proj': 128, 'model.n_ffn': 512, 'train.steps': 600, **_QUIET},
        {'model.n_qkv': 256, 'model.n_proj': 256, 'model.n_ffn': 1024, 'train.steps': 900},
    ),
    'dims': (
        {**_SMALL, **_FEW_TOKENS, 'train.steps': 300, **_QUIET},
        {**_SMALL, **_FEW_TOKENS, 'model.num_layers': 4, 'train.steps': 600, **_QUIET},    # depth
        {**_FEW_TOKENS, 'train.steps': 900, **_QUIET},                                      # width ×2
        {'train.steps': 1200},                                                              # tokens ×2
    ),
}


def get_config(arg: str = 'tokens'):
  if arg not in SCHEDULES:
    raise ValueError(f'unknown schedule {arg!r}: one of {", ".join(SCHEDULES)}')
  c = tiny.get_config()
  c.stages = SCHEDULES[arg]
  c.growth.policy = 'exact'
  c.growth.optimizer = 'carry'
  c.train.checkpoint_every = 100
  return c
