"""Growth: append parameter tokens to every Pattention of a trained state, and keep training.

A checkpoint of config S becomes a checkpoint of config B that differs only in token counts
(n_qkv, n_proj, n_ffn, each ≥ S's). Policies (config.growth):
- policy `exact`: new key tokens 0, new value tokens random, τ frozen at √n of S (B's n_ref_* are set
  and stored with the model): a new token's score is 0, GELU(0) = 0, and the norm over the token axis is
  unchanged, so B computes S's function. GELU′(0) ≠ 0, so the new keys still get gradient.
  policy `paper`: new keys and values random, τ = √n of B (the reference's behaviour; changes outputs).
- optimizer `carry`: Adam moments kept for old tokens, 0 for new ones, step count kept (B's train.steps
  is then the cumulative total); `reset`: fresh moments and step 0 (a new warmup + cosine over B's steps).
- freeze_old: the train step zeroes the updates of everything but the new tokens.

The grown state is written into a new workdir. Orbax reads S's arrays straight into B-shaped arrays
with B's shardings (B's mesh may differ in device count and axis sizes), zero-padding the new rows as
it reads; a jitted in-place pass then writes the policy's random rows. So the grown state is the only
copy ever held, and no array is gathered whole on one host.
"""
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from tokenformer_jax import checkpoint, data, sharding
from tokenformer_jax import state as state_lib
from tokenformer_jax.errors import UserError
from tokenformer_jax.pattention import wang_std

# token-count group → its config key and the Pattentions that hold that many tokens
GROUPS = {'qkv': ('query', 'key', 'value'), 'proj': ('proj',), 'ffn': ('mlp',)}
GROWABLE_KEYS = ('n_qkv', 'n_proj', 'n_ffn', 'n_ref_qkv', 'n_ref_proj', 'n_ref_ffn')


def counts(model_cfg) -> dict[str, int]:
  return {group: int(model_cfg[f'n_{group}']) for group in GROUPS}


def _group_of(layer_name: str) -> str | None:
  for group, names in GROUPS.items():
    if layer_name in names:
      return group
  return None


def grown_config(cfg_b, model_s: dict) -> ml_collections.ConfigDict:
  """B's config with τ settled by the policy; refuses anything but more tokens (naming it)."""
  m = cfg_b.model
  diffs = [f'model.{k}: checkpoint {model_s.get(k)!r}, config {m[k]!r}'
           for k in checkpoint.MODEL_KEYS if k not in GROWABLE_KEYS and model_s.get(k) != m[k]]
  if diffs:
    raise UserError('growth only adds parameter tokens; the config also changes ' + '; '.join(diffs))
  for group, names in GROUPS.items():
    old, new = int(model_s[f'n_{group}']), int(m[f'n_{group}'])
    if new < old:
      raise UserError(
          f'cannot grow to fewer tokens: params/blocks/{names[0]}/key_tokens: checkpoint '
          f'({model_s["num_layers"]}, {old}, {m.d_model}), config ({m.num_layers}, {new}, {m.d_model})')
  grown = ml_collections.ConfigDict(cfg_b.to_dict())
  for group in GROUPS:
    # exact: τ stays at the checkpoint's (its frozen count, else its token count); paper: τ = √n
    old_ref = int(model_s[f'n_ref_{group}']) or int(model_s[f'n_{group}'])
    grown.model[f'n_ref_{group}'] = old_ref if cfg_b.growth.policy == 'exact' else 0
  return grown


def make_fill_fn(spec_b, cfg_b, old_counts: dict[str, int]):
  """jit(state with zero rows for the new tokens, key) → the grown state, in place (donated).

  Orbax already padded every token table and Adam moment with zeros (see checkpoint.restore_grown);
  this writes the policy's random rows (values; keys too under `paper`) and, for `reset`, a fresh
  optimizer state and step 0. Random rows are generated sharded, with B's shardings."""
  policy, m = cfg_b.growth.policy, cfg_b.model
  value_std = m.value_init_std or wang_std(m.num_layers, m.d_model)

  def fill(state, key):
    def one(i, path, x):
      keys = [checkpoint.key_name(e) for e in path]
      group = _group_of(keys[-2]) if keys[-1].endswith('_tokens') else None
      if group is None:
        return x
      std = value_std if keys[-1] == 'value_tokens' else (0.0 if policy == 'exact' else m.key_init_std)
      old = old_counts[group]
      if std == 0.0 or old == x.shape[1]:
        return x
      # random numbers for the new rows only, written in place into the donated table
      rows = std * jax.random.normal(jax.random.fold_in(key, i), (x.shape[0], x.shape[1] - old) + x.shape[2:],
                                     x.dtype)
      return jax.lax.dynamic_update_slice_in_dim(x, rows, old, axis=1)

    leaves = jax.tree_util.tree_flatten_with_path(state['params'])[0]
    params = jax.tree.unflatten(jax.tree.structure(state['params']),
                                [one(i, path, x) for i, (path, x) in enumerate(leaves)])
    if cfg_b.growth.optimizer == 'carry':
      return {'params': params, 'opt_state': state['opt_state'], 'step': state['step']}
    return {'params': params, 'opt_state': spec_b.tx.init(params), 'step': jnp.zeros((), jnp.int32)}

  return jax.jit(fill, in_shardings=(spec_b.shardings, None), out_shardings=spec_b.shardings,
                 donate_argnums=0)


def pad_state(state, spec_b):
  """In-memory counterpart of checkpoint.restore_grown: zero rows appended along each token axis."""
  def pad(x, target):
    widths = [(0, t - s) for s, t in zip(x.shape, target.shape)]
    return jnp.pad(x, widths) if any(w for _, w in widths) else x
  return jax.jit(lambda s: jax.tree.map(pad, s, spec_b.abstract),
                 out_shardings=spec_b.shardings)(state)


def grow_state(state, spec_b, cfg_b, old_counts: dict[str, int], key):
  """Grows an in-memory state (used by tests and tools; `grow` works from checkpoints)."""
  return make_fill_fn(spec_b, cfg_b, old_counts)(pad_state(state, spec_b), key)


def freeze_old_updates(updates, old_counts: dict[str, int]):
  """Zeroes every update except the rows of tokens added after `old_counts`."""
  def mask(path, u):
    keys = [checkpoint.key_name(e) for e in path]
    group = _group_of(keys[-2]) if len(keys) >= 2 and keys[-1].endswith('_tokens') else None
    if group is None:
      return jnp.zeros_like(u)
    new_rows = jnp.arange(u.shape[1]) >= old_counts[group]
    return u * new_rows.reshape((1, -1) + (1,) * (u.ndim - 2)).astype(u.dtype)
  return jax.tree_util.tree_map_with_path(mask, updates)


def grow(cfg_b, src_workdir: str, dst_workdir: str, step: int | None = None,
         timings: dict | None = None) -> int:
  """Grows SRC's checkpoint (latest, or `step`) into a checkpoint of cfg_b in DST; returns its step.

  `timings`, if given, receives the seconds spent restoring, growing and saving."""
  timings = {} if timings is None else timings
  src = checkpoint.manager(src_workdir, create=False)
  available = src.all_steps()
  if not available:
    raise UserError(f'no checkpoint to grow in {src_workdir}')
  step = max(available) if step is None else step
  if step not in available:
    raise UserError(f'no checkpoint step {step} in {src_workdir}; available: {sorted(available)}')
  dst = checkpoint.manager(dst_workdir, keep=cfg_b.train.keep_checkpoints, create=False)
  if dst.latest_step() is not None:
    raise UserError(f'{dst_workdir} already holds a checkpoint; grow into a new workdir')
  meta_s = checkpoint.read_meta(src, step)
  cfg_s = ml_collections.ConfigDict(meta_s['config'])
  diffs = [f'data.{k}: checkpoint {cfg_s.data[k]!r}, config {cfg_b.data[k]!r}'
           for k in checkpoint.DATA_KEYS if cfg_s.data[k] != cfg_b.data[k]]
  if diffs:
    raise UserError('growth keeps the tokenizer; the config changes ' + '; '.join(diffs))
  grown_cfg = grown_config(cfg_b, meta_s['config']['model'])
  vocab = meta_s['vocab_size']

  spec_b = state_lib.make_spec(grown_cfg, vocab, sharding.make_mesh(cfg_b.mesh))

  cache_dir = cfg_b.data.cache_dir or os.path.join(src_workdir, 'data')
  corpus = data.prepare_corpus(cfg_b.data, cache_dir)
  n_proc, proc = jax.process_count(), jax.process_index()
  data_iter = data.train_iterator(corpus.train_tokens, cfg_b.data.seq_len,
                                  cfg_b.train.batch_size // n_proc, cfg_b.seed, proc, n_proc)
  clock = time.perf_counter()
  padded = checkpoint.restore_grown(src, step, state_lib.abstract_targets(spec_b), data_iter)
  jax.block_until_ready(padded)
  timings['restore_s'] = time.perf_counter() - clock
  clock = time.perf_counter()
  state_b = make_fill_fn(spec_b, grown_cfg, counts(cfg_s.model))(
      padded, jax.random.key(cfg_b.growth.seed))
  jax.block_until_ready(state_b)
  timings['grow_s'] = time.perf_counter() - clock
  clock = time.perf_counter()
  new_step = int(state_b['step'])
  meta = checkpoint.run_meta(grown_cfg, vocab)
  meta['grown_from'] = {'workdir': os.path.abspath(src_workdir), 'step': step,
                        'counts': counts(cfg_s.model), 'policy': cfg_b.growth.policy,
                        'optimizer': cfg_b.growth.optimizer}
  checkpoint.save(dst, new_step, state_b, data_iter, meta)
  timings['save_s'] = time.perf_counter() - clock
  logging.info('grew %s step %d (%s) into %s step %d (%s), policy %s, optimizer %s', src_workdir,
               step, counts(cfg_s.model), dst_workdir, new_step, counts(grown_cfg.model),
               cfg_b.growth.policy, cfg_b.growth.optimizer)
  return new_step
