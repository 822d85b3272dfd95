"""The optax chain: global-norm clipping, then AdamW on a linear-warmup + cosine schedule.

Weight decay skips the final LayerNorm's scale and bias (the block norms have no parameters).
`frozen_rows` freezes parameters, or parts of them, by multiplying the chain's updates: growth's
freeze_old trains only what the growth added that way. It wraps the chain rather than joining it, so
the optimizer state has the same structure frozen or not, and a checkpoint resumes either way.
"""
import functools

import jax
import jax.numpy as jnp
import optax


def schedule(cfg_opt, total_steps: int) -> optax.Schedule:
  """0 → lr over warmup_frac·total_steps, then cosine to min_lr at total_steps."""
  warmup = int(cfg_opt.warmup_frac * total_steps)
  if warmup == 0:
    return optax.cosine_decay_schedule(cfg_opt.lr, max(total_steps, 1), cfg_opt.min_lr / cfg_opt.lr)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg_opt.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=cfg_opt.min_lr)


def decay_mask(params):
  """True for parameters that get weight decay: everything but norm scales and biases."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'norm' not in jax.tree_util.keystr(path), params)


def frozen_rows(tx: optax.GradientTransformation, old_masks) -> optax.GradientTransformation:
  """tx, with each update multiplied by 1 − the product of its leaf of `old_masks` (a params-shaped
  tree of tuples of 0/1 arrays, one per axis, shaped to broadcast against the parameter: the product
  marks the frozen positions). Per-axis factors keep the constants small: the product is never built
  outside the update's fused multiply."""
  def update(updates, state, params=None):
    updates, state = tx.update(updates, state, params)

    def one(u, masks):
      old = functools.reduce(lambda a, b: a * jnp.asarray(b, u.dtype), masks, jnp.ones((), u.dtype))
      return u * (1 - old)
    return jax.tree.map(one, updates, old_masks), state
  return optax.GradientTransformation(tx.init, update)


def make_optimizer(cfg_opt, lr_schedule: optax.Schedule, multipliers=None) -> optax.GradientTransformation:
  """The chain on `lr_schedule` (built once per run by `schedule`: the train step logs the same one);
  `multipliers` (old masks, see frozen_rows) restricts which parameters it updates."""
  tx = optax.chain(
      optax.clip_by_global_norm(cfg_opt.clip_norm),
      optax.adamw(lr_schedule, b1=cfg_opt.b1, b2=cfg_opt.b2, eps=cfg_opt.eps,
                  weight_decay=cfg_opt.weight_decay, mask=decay_mask))
  return tx if multipliers is None else frozen_rows(tx, multipliers)
