"""The progressive-scaling study at CPU scale: grow a TokenFormer through 4 stages vs training the
largest member from scratch (and a dense Transformer of the same size), on the bundled corpus.

Family: 4 layers, d 128, 4 heads; (attention, FFN) parameter tokens (32, 128) → (64, 256) → (128, 512)
→ (256, 1024), ×2 per stage, like the paper's 124M → 354M → 757M → 1.4B at a thousandth of the size.
get_config(arm), arm one of ARMS (add '-quick' for the ≤ 5 min pipeline check):
  scratch        the largest member from scratch
  exact_carry    growth path, exact growth (τ frozen, new keys 0), Adam state carried
  paper_carry    growth path, the reference's growth (all random, τ = √n), Adam state carried
  exact_reset    growth path, exact growth, fresh optimizer + schedule per stage
  paper_reset    growth path as in the reference (random init, fresh optimizer per stage)
  freeze_old     exact_carry, training only the new tokens in the last stage (parameter-efficient)
  dense          a dense Transformer with the largest member's non-embedding parameters, from scratch
The learning rate and seed are command-line overrides (`--config.optimizer.lr`, `--config.seed`): the
study tunes the baselines over LRS and runs the growth arms at the from-scratch TokenFormer's best.
Run them all, with the figure and table: python studies/progressive_scaling/study.py [--quick]
"""
import itertools

from tokenformer_jax.config import base_config, experiment_beside
from tokenformer_jax.model.transformer import dense_mlp_dim_matching

cpu_study_training = experiment_beside(__file__, '../cpu_training.py').cpu_study_training

BASELINES = ('scratch', 'dense')
GROWTH_ARMS = ('exact_carry', 'paper_carry', 'exact_reset', 'paper_reset', 'freeze_old')
ARMS = ('scratch',) + GROWTH_ARMS + ('dense',)
LRS = (1e-3, 3e-3, 1e-2)   # 3x each way around the base config's 3e-3
TOKENS = ((32, 128), (64, 256), (128, 512), (256, 1024))   # (n_qkv = n_proj, n_ffn) per stage
STAGE_STEPS = (300, 300, 300, 600)
SCRATCH_STEPS = 1200
QUICK = dict(tokens=((32, 128), (64, 256)), stage_steps=(20, 20), scratch_steps=40, lrs=(3e-3, 1e-2))


def get_config(arm: str = 'scratch'):
  arm, quick = (arm[:-len('-quick')], True) if arm.endswith('-quick') else (arm, False)
  if arm not in ARMS:
    raise ValueError(f'unknown arm {arm!r}; choose one of {ARMS} (optionally with -quick)')
  tokens = QUICK['tokens'] if quick else TOKENS
  stage_steps = QUICK['stage_steps'] if quick else STAGE_STEPS
  c = base_config()
  m = c.model
  m.num_layers, m.d_model, m.num_heads = (2, 64, 4) if quick else (4, 128, 4)
  m.n_qkv = m.n_proj = tokens[-1][0]
  m.n_ffn = tokens[-1][1]
  cpu_study_training(c, quick, QUICK['scratch_steps'] if quick else SCRATCH_STEPS)
  if arm == 'dense':
    m.mlp_dim = dense_mlp_dim_matching(m)   # equal non-embedding parameters
    m.kind = 'dense'
  elif arm != 'scratch':
    c.growth.policy, c.growth.optimizer = ('exact', 'carry') if arm == 'freeze_old' else arm.split('_')
    # carry: the step count goes on, so each stage trains until the cumulative total
    ends = itertools.accumulate(stage_steps) if c.growth.optimizer == 'carry' else stage_steps
    c.stages = tuple({'model.n_qkv': n_att, 'model.n_proj': n_att, 'model.n_ffn': n_ffn,
                      'train.steps': end} for (n_att, n_ffn), end in zip(tokens, ends))
    if arm == 'freeze_old':
      c.stages = c.stages[:-1] + ({**c.stages[-1], 'growth.freeze_old': True},)
  return c
