"""The jitted train and eval steps: functional over the state pytree, explicit in/out shardings."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import state as state_lib


def token_losses(spec, params, tokens_BxT1):
  """Per-token cross entropy [B, T] of predicting tokens[:, 1:] from tokens[:, :-1], in float32."""
  logits_BxTxV = state_lib.merge(spec, params)(tokens_BxT1[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, tokens_BxT1[:, 1:])


def make_train_step(spec, cfg):
  """(state, tokens [B, T+1]) → (state, metrics); gradients averaged over cfg.train.grad_accum, the
  update made by spec.tx (which may freeze some parameters: state.make_spec)."""
  accum = cfg.train.grad_accum

  def loss_fn(params, tokens_BxT1):
    return jnp.mean(token_losses(spec, params, tokens_BxT1))

  def train_step(state, tokens_BxT1):
    with sharding.activation_sharding(spec.mesh, cfg.sharding_rules):
      return _train_step(state, tokens_BxT1)

  def _train_step(state, tokens_BxT1):
    params = state['params']
    if accum == 1:
      loss, grads = jax.value_and_grad(loss_fn)(params, tokens_BxT1)
    else:
      # micro-batch k = rows k, k + accum, ...: every device keeps its share of each micro-batch
      B, T1 = tokens_BxT1.shape
      micro = jnp.swapaxes(tokens_BxT1.reshape(B // accum, accum, T1), 0, 1)
      micro = sharding.constrain(micro, (None, 'batch', None))

      def one(carry, mb):
        loss_sum, grad_sum = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, mb)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      (loss, grads), _ = jax.lax.scan(one, (jnp.zeros((), jnp.float32), zeros), micro)
      loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)
    updates, opt_state = spec.tx.update(grads, state['opt_state'], params)
    new_state = {'params': optax.apply_updates(params, updates), 'opt_state': opt_state,
                 'step': state['step'] + 1}
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'lr': spec.lr_schedule(state['step'])}
    return new_state, metrics

  batch_sh = sharding.batch_sharding(spec.mesh, cfg.sharding_rules, 2)
  return jax.jit(train_step, in_shardings=(spec.shardings, batch_sh),
                 out_shardings=(spec.shardings, sharding.replicated(spec.mesh)), donate_argnums=0)


def make_eval_step(spec, cfg):
  """(params, tokens [B, T+1], mask [B, T]) → the summed loss of the targets where mask is 1 (divide by
  their count). The one eval loss: training's validation and --mode=eval both run it, so they report the
  same number for the same checkpoint and windows."""
  def eval_step(params, tokens_BxT1, mask_BxT):
    with sharding.activation_sharding(spec.mesh, cfg.sharding_rules):
      return jnp.sum(token_losses(spec, params, tokens_BxT1) * mask_BxT)

  batch_sh = sharding.batch_sharding(spec.mesh, cfg.sharding_rules, 2)
  return jax.jit(eval_step, in_shardings=(spec.shardings['params'], batch_sh, batch_sh),
                 out_shardings=sharding.replicated(spec.mesh))


def summed_loss(eval_step, spec, cfg, params, batches) -> float:
  """eval_step summed over `batches` of (tokens [b, T+1], mask [b, T]), each this process's rows of a
  global batch."""
  total = 0.0
  for tokens_bxT1, mask_bxT in batches:
    total += float(eval_step(params, global_batch(spec, cfg, tokens_bxT1), global_batch(spec, cfg, mask_bxT)))
  return total


def mean_loss(eval_step, spec, cfg, params, token_batches) -> float:
  """The mean loss per predicted token over `token_batches` (this process's rows, every target counted)."""
  batches = [(tokens_bxT1, np.ones((tokens_bxT1.shape[0], tokens_bxT1.shape[1] - 1), np.float32))
             for tokens_bxT1 in token_batches]
  count = sum(mask_bxT.size for _, mask_bxT in batches) * jax.process_count()
  return summed_loss(eval_step, spec, cfg, params, batches) / count


def global_batch(spec, cfg, local_tokens_BxT1):
  """A global array from this process's rows (each process passes its own share)."""
  batch_sh = sharding.batch_sharding(spec.mesh, cfg.sharding_rules, 2)
  return jax.make_array_from_process_local_data(batch_sh, local_tokens_BxT1)
