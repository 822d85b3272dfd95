"""Growing in depth, in width or in parameter tokens at CPU scale: which dimension is cheapest?

Every arm starts from the same model (2 layers, d 64, 2 heads of 32, tokens 64/64/256: 131k non-embedding
parameters, an eighth of experiments/tiny.py) and grows it ×2 per stage through 4 stages to tiny's 1.05M,
each growth exact (function-preserving) with the Adam state carried, 300 steps per stage:
  tokens            n_qkv = n_proj 64 → 128 → 256 → 512, n_ffn ×4 of that (2 layers, d 64)
  depth             2 → 4 → 8 → 16 layers, new blocks appended (d 64)
  depth_interleave  the same, new blocks placed between the old ones
  width             d 64 → 128 → 256 → 512, heads 2 → 16 (2 layers; the embedding grows too)
  all               one dimension per stage: 4 layers, then d 128 (4 heads), then tokens ×2: tiny
A TokenFormer's non-embedding parameters are linear in each of the three, so every arm ends at 1.05M.
'dense-ARM' runs the dense baseline through the same stages ('tokens' then doubles its MLP width); its
parameters are quadratic in d, so there the arms end at different sizes. Add '-quick' for a ≤ 5 min
pipeline check (2 stages of 20 steps, a 512-piece vocabulary).
  python -m tokenformer_jax.main --config=studies/grow_dims/experiment.py:width --workdir=/tmp/grow_width
"""
import itertools

from tokenformer_jax.config import base_config, experiment_beside

cpu_study_training = experiment_beside(__file__, '../cpu_training.py').cpu_study_training

START = {'num_layers': 2, 'd_model': 64, 'num_heads': 2, 'n_qkv': 64, 'n_proj': 64, 'n_ffn': 256,
         'mlp_dim': 256}


def _doubled(model: dict, keys: tuple) -> dict:
  return {key: 2 * model[key] for key in keys}


# each stage's change to the one before
STEPS = {
    'tokens': ('n_qkv', 'n_proj', 'n_ffn', 'mlp_dim'),
    'depth': ('num_layers',),
    'depth_interleave': ('num_layers',),
    'width': ('d_model', 'num_heads', 'mlp_dim'),
}
ALL = (('num_layers',), ('d_model', 'num_heads', 'mlp_dim'), ('n_qkv', 'n_proj', 'n_ffn', 'mlp_dim'))
ARMS = tuple(STEPS) + ('all',)
STAGE_STEPS = 300


def stage_models(arm: str, stages: int = 4) -> list[dict]:
  """The model keys of each stage of an arm."""
  changes = ALL if arm == 'all' else (STEPS[arm],) * (stages - 1)
  models = [dict(START)]
  for keys in changes[:stages - 1]:
    models.append({**models[-1], **_doubled(models[-1], keys)})
  return models


def get_config(arm: str = 'all'):
  name, quick = (arm[:-len('-quick')], True) if arm.endswith('-quick') else (arm, False)
  kind, _, name = name.rpartition('-') if name.startswith('dense-') else ('tokenformer', '', name)
  if name not in ARMS:
    raise ValueError(f'unknown arm {arm!r}; choose one of {ARMS}, optionally as dense-ARM and with -quick')
  stages, steps = (2, 20) if quick else (4, STAGE_STEPS)
  c = base_config()
  c.model.kind = kind
  models = stage_models(name, stages)
  for key, value in models[-1].items():
    c.model[key] = value
  cpu_study_training(c, quick, steps * stages)
  c.growth.policy, c.growth.optimizer = 'exact', 'carry'
  c.growth.depth_placement = 'interleave' if name == 'depth_interleave' else 'append'
  # carry: the step count goes on, so each stage trains until the cumulative total
  ends = itertools.accumulate([steps] * stages)
  c.stages = tuple({**{f'model.{key}': value for key, value in model.items()}, 'train.steps': end}
                   for model, end in zip(models, ends))
  return c
