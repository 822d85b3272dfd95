"""The optax chain: global-norm clipping, then AdamW on a linear-warmup + cosine schedule.

Weight decay skips the final LayerNorm's scale and bias (the block norms have no parameters).
`frozen_rows` freezes parameters, or some of their rows, by multiplying the chain's updates: growth's
freeze_old trains only the new parameter tokens that way. It wraps the chain rather than joining it, so
the optimizer state has the same structure frozen or not, and a checkpoint resumes either way.
"""
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


def frozen_rows(tx: optax.GradientTransformation, multipliers) -> optax.GradientTransformation:
  """tx, with each update multiplied by its leaf of `multipliers` (a params-shaped tree of arrays that
  broadcast against the parameter: 0 freezes it, a [1, n, 1] 0/1 column freezes some rows)."""
  def update(updates, state, params=None):
    updates, state = tx.update(updates, state, params)
    return jax.tree.map(lambda u, k: u * jnp.asarray(k, u.dtype), updates, multipliers), state
  return optax.GradientTransformation(tx.init, update)


def make_optimizer(cfg_opt, total_steps: int, multipliers=None) -> optax.GradientTransformation:
  """The chain; `multipliers` (see frozen_rows) restricts which parameters it updates."""
  tx = optax.chain(
      optax.clip_by_global_norm(cfg_opt.clip_norm),
      optax.adamw(schedule(cfg_opt, total_steps), b1=cfg_opt.b1, b2=cfg_opt.b2, eps=cfg_opt.eps,
                  weight_decay=cfg_opt.weight_decay, mask=decay_mask))
  return tx if multipliers is None else frozen_rows(tx, multipliers)
