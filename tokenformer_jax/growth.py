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

The grown state is written into a new workdir, in three phases (`grow` runs them; benchmarks/grow.py
times them one by one): `restore_padded` has Orbax read S's arrays straight into B-shaped arrays with B's
shardings (B's mesh may differ in device count and axis sizes), zero-padding the new rows as it reads;
`fill_state` writes the policy's random rows table by table, each shard drawing its own rows on its host
(counter-based, so the values do not depend on the mesh); `save` commits the checkpoint. So the grown
state is the only copy ever held (plus one table in flight), no array is gathered whole on one host, and
nothing is compiled.
"""
import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from tokenformer_jax import checkpoint, sharding, weights, workdir_lock
from tokenformer_jax.data import pipeline
from tokenformer_jax import model as model_lib
from tokenformer_jax import state as state_lib
from tokenformer_jax.errors import UserError
from tokenformer_jax.pattention import wang_std

GROWABLE_KEYS = tuple(f'n_{group}' for group in model_lib.TOKEN_GROUPS) + checkpoint.N_REF_KEYS
# What the grown checkpoint keeps of the source's meta about its tokenizer (checkpoint.run_meta).
TOKENIZER_META = ('tokenizer_sha256', 'tokenizer_vocab_size')


def grown_config(cfg_b, model_s: dict, meta_s: dict | None = None) -> ml_collections.ConfigDict:
  """B's config with τ settled by the policy; refuses anything but more tokens (naming it). meta_s: the
  source checkpoint's, when it has one (model.vocab_size is then compared by what it resolves to)."""
  m = cfg_b.model
  diffs = checkpoint.model_differences(model_s, m, ignore=GROWABLE_KEYS, saved_meta=meta_s)
  if diffs:
    raise UserError('growth only adds parameter tokens; the config also changes ' + '; '.join(diffs))
  for group, layers in model_lib.TOKEN_GROUPS.items():
    old, new = int(model_s[f'n_{group}']), int(m[f'n_{group}'])
    if new < old:
      raise UserError(
          f'cannot grow to fewer tokens: params/blocks/{layers[0]}/key_tokens: checkpoint '
          f'({model_s["num_layers"]}, {old}, {m.d_model}), config ({m.num_layers}, {new}, {m.d_model})')
  grown = ml_collections.ConfigDict(cfg_b.to_dict())
  for group in model_lib.TOKEN_GROUPS:
    # exact: τ stays at the checkpoint's (its frozen count, else its token count); paper: τ = √n
    old_ref = int(model_s[f'n_ref_{group}']) or int(model_s[f'n_{group}'])
    grown.model[f'n_ref_{group}'] = old_ref if cfg_b.growth.policy == 'exact' else 0
  grown.lock()
  return grown


def random_rows(seed: int, leaf: int, layer: int, first: int, count: int, width: int) -> np.ndarray:
  """Rows first … first+count−1 (counted from the first new row) of a table's standard-normal new rows,
  [count, width] float32. Counter-based (Philox keyed by seed, leaf, layer; Box–Muller on two uniforms
  per value), so any range is drawn directly: every shard draws only its own rows, and the values do not
  depend on the mesh or on how the rows are split."""
  start = 2 * width * first                       # uniforms used by the rows before `first`
  generator = np.random.Generator(np.random.Philox(
      key=np.array([seed, (leaf << 32) | layer], np.uint64), counter=[start // 4, 0, 0, 0]))
  uniforms = generator.random(start % 4 + 2 * width * count)[start % 4:].reshape(count, 2, width)
  radius = np.sqrt(-2.0 * np.log((1.0 - uniforms[:, 0]).astype(np.float32)))   # 1 − u ∈ (0, 1]
  return radius * np.cos((2.0 * np.pi * uniforms[:, 1]).astype(np.float32))


def _with_random_rows(x: jax.Array, old: int, std: float, seed: int, leaf: int) -> jax.Array:
  """x [L, n, d] with rows old … n−1 of the token axis set to std·random_rows: built shard by shard on
  the host from x's own shards (no compilation; one shard copied at a time)."""
  shards = {_index_key(s.index): s for s in x.addressable_shards}

  def shard(index):
    block = np.array(shards[_index_key(index)].data)
    layers = range(x.shape[0])[index[0]]
    rows = range(x.shape[1])[index[1]]
    cols = index[2]
    new_from = max(old, rows.start)
    if new_from >= rows.stop:
      return block
    for i, layer in enumerate(layers):
      values = random_rows(seed, leaf, layer, new_from - old, rows.stop - new_from, x.shape[2])
      block[i, new_from - rows.start:] = (std * values[:, cols]).astype(block.dtype)
    return block

  return jax.make_array_from_callback(x.shape, x.sharding, shard)


def _index_key(index) -> tuple:
  return tuple((sl.start, sl.stop) for sl in index)


def fill_state(padded, spec_b, cfg_b, old_counts: dict[str, int], seed: int):
  """The grown state from one whose token tables already hold zeros in the new rows (Orbax pads them
  while restoring, see restore_padded): writes the policy's random rows (values; keys too
  under `paper`) leaf by leaf, and for `reset` a fresh optimizer state and step 0.

  Nothing is compiled for `carry` (the common case), and at most one table is held twice at a time."""
  policy, m = cfg_b.growth.policy, cfg_b.model
  value_std = m.value_init_std or wang_std(m.num_layers, m.d_model)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(padded['params'])
  filled = []
  for i, (path, x) in enumerate(leaves):
    keys = tuple(checkpoint.path_string(path).split('/'))
    group = model_lib.token_group(keys)
    std = 0.0 if group is None else (
        value_std if keys[-1] == 'value_tokens' else (0.0 if policy == 'exact' else m.key_init_std))
    if std and old_counts[group] < x.shape[1]:
      x = _with_random_rows(x, old_counts[group], std, seed, i)
    filled.append(x)
  params = jax.tree.unflatten(treedef, filled)
  if cfg_b.growth.optimizer == 'carry':
    return {'params': params, 'opt_state': padded['opt_state'], 'step': padded['step']}
  fresh = jax.jit(spec_b.tx.init, out_shardings=spec_b.shardings['opt_state'])(params)
  return {'params': params, 'opt_state': fresh,
          'step': jax.device_put(np.zeros((), np.int32), spec_b.shardings['step'])}


@dataclasses.dataclass
class Plan:
  """A checked growth of SRC's checkpoint `step` into DST, before any array is read."""
  src: Any                  # the source workdir's CheckpointManager (None: a released file)
  step: int
  dst: Any                  # the destination's (empty) CheckpointManager
  cfg: ml_collections.ConfigDict      # B's config with τ settled (grown_config)
  old_counts: dict[str, int]
  spec: state_lib.StateSpec
  data_iter: Any            # restored with the state: the data position goes on
  meta: dict                # saved with the grown checkpoint
  source: Any = None        # weights.Source when only parameters are read (an import or a file)


def plan(cfg_b, src_workdir: str, dst_workdir: str, step: int | None = None) -> Plan:
  """Every check of a growth (source step, empty destination, same tokenizer, only more tokens).
  The source is a workdir (trained, grown or imported) or a released checkpoint file (weights.py)."""
  if os.path.isfile(src_workdir):
    return _plan_from_params(cfg_b, weights.open_source(src_workdir, cfg_b, step), dst_workdir)
  src = checkpoint.manager(src_workdir, create=False)
  available = src.all_steps()
  if not available:
    raise UserError(f'no checkpoint to grow in {src_workdir}')
  step = max(available) if step is None else step
  if step not in available:
    raise UserError(f'no checkpoint step {step} in {src_workdir}; available: {sorted(available)}')
  if all(path.startswith('params/') for path in checkpoint.saved_shapes(src, step)):
    return _plan_from_params(cfg_b, weights.open_source(src_workdir, cfg_b, step), dst_workdir)
  dst = _empty_destination(cfg_b, dst_workdir)
  meta_s = checkpoint.read_meta(src, step)
  cfg_s = ml_collections.ConfigDict(meta_s['config'])
  grown_cfg = grown_config(cfg_b, meta_s['config']['model'], meta_s)
  vocab = meta_s['vocab_size']
  spec_b = state_lib.make_spec(grown_cfg, vocab, sharding.make_mesh(cfg_b.mesh))
  data_position = pipeline.Position()  # the source's, read with its state; no data is opened
  old_counts = model_lib.token_counts(cfg_s.model)
  meta = checkpoint.run_meta(grown_cfg, vocab)
  meta.update({k: meta_s[k] for k in TOKENIZER_META if k in meta_s})
  meta['grown_from'] = {'workdir': os.path.abspath(src_workdir), 'step': step, 'counts': old_counts,
                        'policy': cfg_b.growth.policy, 'optimizer': cfg_b.growth.optimizer}
  return Plan(src, step, dst, grown_cfg, old_counts, spec_b, data_position, meta)


def _empty_destination(cfg_b, dst_workdir: str):
  dst = checkpoint.manager(dst_workdir, keep=cfg_b.train.keep_checkpoints, create=False)
  if dst.latest_step() is not None:
    raise UserError(f'{dst_workdir} already holds a checkpoint; grow into a new workdir')
  return dst


def _plan_from_params(cfg_b, source, dst_workdir: str) -> Plan:
  """A source with parameters only (an imported checkpoint, a released file): the grown state gets
  Adam moments of zero and step 0, and the data iterator starts at the beginning."""
  dst = _empty_destination(cfg_b, dst_workdir)
  grown_cfg = grown_config(cfg_b, source.model, source.meta)
  spec_b = state_lib.make_spec(grown_cfg, source.vocab_size, sharding.make_mesh(cfg_b.mesh))
  old_counts = {group: int(source.model[f'n_{group}']) for group in model_lib.TOKEN_GROUPS}
  meta = checkpoint.run_meta(grown_cfg, source.vocab_size)
  meta.update({k: source.meta[k] for k in TOKENIZER_META if k in (source.meta or {})})
  meta['grown_from'] = {'workdir': source.path, 'step': source.step or 0, 'counts': old_counts,
                        'policy': cfg_b.growth.policy, 'optimizer': cfg_b.growth.optimizer}
  return Plan(None, source.step or 0, dst, grown_cfg, old_counts, spec_b, pipeline.Position(), meta,
              source=source)


def restore_padded(p: Plan):
  """The source state in B's shapes and shardings, the new token rows zero (Orbax pads while reading)."""
  if p.source is not None:
    logging.warning('%s holds parameters only: the grown state starts with Adam moments of zero, at '
                    'step 0, and its data iterator at the beginning', p.source.text)
    return state_lib.from_params(p.spec, weights.read_params(p.source, p.spec, grows_tokens=True))
  return checkpoint.restore(p.src, p.step, state_lib.abstract_targets(p.spec), p.data_iter,
                            grows_tokens=True)


def save(p: Plan, state_b) -> int:
  """Commits the grown state (and the data position) as DST's first checkpoint; returns its step."""
  new_step = int(state_b['step'])
  checkpoint.save(p.dst, new_step, state_b, p.data_iter, p.meta)
  logging.info('grew %s step %d (%s) into %s step %d (%s), policy %s, optimizer %s',
               p.source.text if p.source is not None else p.src.directory,
               p.step, p.old_counts, p.dst.directory, new_step, model_lib.token_counts(p.cfg.model),
               p.cfg.growth.policy, p.cfg.growth.optimizer)
  return new_step


def grow(cfg_b, src_workdir: str, dst_workdir: str, step: int | None = None) -> int:
  """Grows SRC's checkpoint (latest, or `step`) into a checkpoint of cfg_b in DST; returns its step."""
  with workdir_lock.hold(dst_workdir):
    p = plan(cfg_b, src_workdir, dst_workdir, step)
    state_b = fill_state(restore_padded(p), p.spec, p.cfg, p.old_counts, cfg_b.growth.seed)
    return save(p, state_b)
