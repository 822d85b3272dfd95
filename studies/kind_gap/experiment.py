"""TokenFormer against the dense Transformer of equal non-embedding parameters, at three sizes: the
default tiny model (experiments/tiny.py: 4 layers, d 128, 1.05M non-embedding parameters) and 4× and
16× its non-embedding parameters (d ×2 and ×4, every parameter-token count ×2 and ×4, head width 32).
Every size trains 600 steps of 16 × 128 tokens, about one pass over the bundled KJV text: more steps
for the larger sizes would be the fairer budget, but they would repeat the data, and 16× at 600 steps is
already about ten minutes a run on 2 CPU cores.

get_config('KIND-xSCALE'), KIND one of KINDS, SCALE one of SCALES (add '-quick' for the pipeline
check's 2-layer, d 64 models of 40 steps). The learning rate (and any ablation) is a command-line
override; studies/kind_gap/study.py tunes each kind at each size and plots the gap.
"""
import math

from tokenformer_jax.config import base_config, experiment_beside
from tokenformer_jax.model.transformer import dense_mlp_dim_matching

cpu_study_training = experiment_beside(__file__, '../cpu_training.py').cpu_study_training

KINDS = ('tokenformer', 'dense')
SCALES = (1, 4, 16)
LRS = (1e-3, 3e-3, 1e-2)                # where tuning starts; it extends past an edge that wins
LR_LADDER = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
STEPS = 600
QUICK = dict(steps=40, scales=(1, 4), lrs=(3e-3, 1e-2))


def get_config(arm: str = 'tokenformer-x1'):
  name, quick = (arm[:-len('-quick')], True) if arm.endswith('-quick') else (arm, False)
  kind, _, scale = name.partition('-x')
  if kind not in KINDS or not scale.isdigit() or int(scale) not in SCALES:
    raise ValueError(f'unknown arm {arm!r}: want KIND-xSCALE with KIND in {KINDS} and SCALE in '
                     f'{SCALES} (optionally with -quick)')
  width = math.isqrt(int(scale))          # non-embedding parameters grow as d · n: both × √scale
  c = base_config()
  m = c.model
  m.num_layers, m.d_model = (2, 64 * width) if quick else (4, 128 * width)
  m.num_heads = m.d_model // 32 if not quick else m.d_model // 16
  m.n_qkv = m.n_proj = (64 if quick else 128) * width
  m.n_ffn = (256 if quick else 512) * width
  if kind == 'dense':
    m.mlp_dim = dense_mlp_dim_matching(m)
    m.kind = 'dense'
  cpu_study_training(c, quick, QUICK['steps'] if quick else STEPS)
  return c
