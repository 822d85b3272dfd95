"""Growing in depth, in width or in parameter tokens at CPU scale: which dimension is cheapest?

Every arm starts from the same model (2 layers, d 64, 2 heads of 32, tokens 64/64/256: 131k non-embedding
parameters, an eighth of experiments/tiny.py) and grows it ×2 per stage through 4 stages of STAGE_STEPS
(batches of 8 × 128 tokens) to tiny's 1.05M:
  tokens            n_qkv = n_proj 64 → 128 → 256 → 512, n_ffn ×4 of that (2 layers, d 64)
  depth             2 → 4 → 8 → 16 layers, new blocks appended (d 64)
  depth_interleave  the same, new blocks placed between the old ones
  width             d 64 → 128 → 256 → 512, heads 2 → 16 (2 layers; the embedding grows too)
  all               one dimension per stage: 4 layers, then d 128 (4 heads), then tokens ×2: tiny
A TokenFormer's non-embedding parameters are linear in each of the three, so every arm ends at 1.05M.
'dense-ARM' runs the dense baseline (its start's MLP sized to the TokenFormer start's parameters)
through the same stages ('tokens' doubles its MLP width); its parameters are quadratic in d, so
dense-width ends at 8× the others. Depth and width growth keep the function; new tokens (new dense
hidden units) are drawn as the reference draws them (growth.policy paper: keys and values random,
τ = √n), and the optimizer and schedule restart per stage (growth.optimizer reset: the progressive
study's better treatment); 'ARM-carry' carries the Adam state and step count instead.
The baselines, trained from scratch for the arms' total steps at the final size: 'scratch' (tiny's
TokenFormer) and 'dense' (the dense Transformer of equal non-embedding parameters). Add '-quick' for the
pipeline check (2 stages of 20 steps, a 512-piece vocabulary). The driver: studies/grow_dims/study.py.
  python -m tokenformer_jax.main --config=studies/grow_dims/experiment.py:width --workdir=/tmp/grow_width
"""
import itertools

from tokenformer_jax.config import base_config, experiment_beside
from tokenformer_jax.model.transformer import dense_mlp_dim_matching

cpu_study_training = experiment_beside(__file__, '../cpu_training.py').cpu_study_training

START = {'num_layers': 2, 'd_model': 64, 'num_heads': 2, 'n_qkv': 64, 'n_proj': 64, 'n_ffn': 256}

# each stage's change to the one before
STEPS = {
    'tokens': ('n_qkv', 'n_proj', 'n_ffn', 'mlp_dim'),
    'depth': ('num_layers',),
    'depth_interleave': ('num_layers',),
    'width': ('d_model', 'num_heads', 'mlp_dim'),
}
ALL = (('num_layers',), ('d_model', 'num_heads', 'mlp_dim'), ('n_qkv', 'n_proj', 'n_ffn', 'mlp_dim'))
ARMS = tuple(STEPS) + ('all',)
BASELINES = ('scratch', 'dense')
STAGE_STEPS = 150
BATCH_SIZE = 8    # half the other studies' 16 × 128 tokens: the 2-core budget of 19 runs
EVAL_EVERY = 50   # three evaluations per stage: the FLOPs at which a curve reaches a loss, to a sixth
QUICK_STAGES, QUICK_STAGE_STEPS = 2, 20


def _doubled(model: dict, keys: tuple) -> dict:
  return {key: 2 * model[key] for key in keys}


def stage_models(arm: str, stages: int = 4) -> list[dict]:
  """The model keys of each stage of an arm (mlp_dim: the dense start's, matched to START's parameters)."""
  start = dict(START)
  probe = base_config().model
  probe.update(start)
  start['mlp_dim'] = dense_mlp_dim_matching(probe)
  changes = ALL if arm == 'all' else (STEPS[arm],) * (stages - 1)
  models = [start]
  for keys in changes[:stages - 1]:
    models.append({**models[-1], **_doubled(models[-1], keys)})
  return models


def _parse(arm: str) -> tuple[str, str, str, bool]:
  """'dense-width-carry-quick' → (kind, arm, optimizer, quick)."""
  name, quick = (arm[:-len('-quick')], True) if arm.endswith('-quick') else (arm, False)
  name, optimizer = (name[:-len('-carry')], 'carry') if name.endswith('-carry') else (name, 'reset')
  kind, name = ('dense', name[len('dense-'):]) if name.startswith('dense-') else ('tokenformer', name)
  if name not in ARMS + BASELINES or (name in BASELINES and (kind == 'dense' or optimizer == 'carry')):
    raise ValueError(f'unknown arm {arm!r}; choose one of {BASELINES} or of {ARMS}, the latter optionally '
                     'as dense-ARM and ARM-carry; any with -quick')
  return kind, name, optimizer, quick


def get_config(arm: str = 'all'):
  kind, name, optimizer, quick = _parse(arm)
  stages, steps = (QUICK_STAGES, QUICK_STAGE_STEPS) if quick else (4, STAGE_STEPS)
  c = base_config()
  cpu_study_training(c, quick, steps * stages)
  if not quick:
    c.train.batch_size, c.train.eval_every = BATCH_SIZE, EVAL_EVERY
  if name in BASELINES:   # the final size, from scratch, for as many steps as a growth arm's total
    c.model.update(stage_models('all', stages)[-1])
    if name == 'dense':
      c.model.kind = 'dense'
      c.model.mlp_dim = dense_mlp_dim_matching(c.model)
    return c
  c.model.kind = kind
  models = stage_models(name, stages)
  c.model.update(models[-1])
  c.growth.policy, c.growth.optimizer = 'paper', optimizer
  c.growth.depth_placement = 'interleave' if name == 'depth_interleave' else 'append'
  # carry: the step count goes on, so each stage trains until the cumulative total; reset: from 0
  ends = itertools.accumulate([steps] * stages) if optimizer == 'carry' else [steps] * stages
  c.stages = tuple({**{f'model.{key}': value for key, value in model.items()}, 'train.steps': end}
                   for model, end in zip(models, ends))
  return c
