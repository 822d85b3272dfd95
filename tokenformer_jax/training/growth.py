"""Growth: a trained state made deeper, wider and with more parameter tokens, exactly, onto any mesh.

A checkpoint of config S becomes a checkpoint of config B that may differ in what
run_record.GROWTH_RULES allows: more blocks (num_layers), d_model and num_heads times one integer k
(heads keep their size), more parameter tokens (n_qkv, n_proj, n_ffn) and, for the dense baseline, a
wider MLP. Where each grown element comes from is growth_layout.py's: new blocks with zero outputs,
placed by growth.depth_placement; the residual stream repeated k times, with what reads it split into k
parts whose noise cancels (growth.width_noise). Depth and width always keep the function; the policy
(config.growth) says what new tokens are:
- policy `exact`: new key tokens 0, new value tokens random, τ frozen at √n of S (B's n_ref_* are set
  and stored with the model): a new token's score is 0, GELU(0) = 0, and the norm over the token axis is
  unchanged, so B computes S's function. GELU′(0) ≠ 0, so the new keys still get gradient. The dense
  MLP's new hidden units likewise: up kernel 0, down kernel random.
  policy `paper`: new keys and values random, τ = √n of B (the reference's behaviour; changes outputs).
- optimizer `carry`: Adam moments mapped as the gradients are (growth_layout.py), 0 for everything new,
  step count kept (B's train.steps is then the cumulative total); `reset`: fresh moments and step 0
  (a new warmup + cosine over B's steps).
- freeze_old: the train step zeroes the updates of everything but what is new (growth_layout.old_masks).

The grown state is written into a new workdir, in three phases (`grow` runs them; benchmarks/grow.py
times them one by one): `restore_source` has Orbax read S's arrays onto B's mesh (which may differ in
device count and axis sizes) in the source layout of growth_compose.py: straight into the grown arrays,
zero-padded, where only positions are added at the end of axes (tokens, appended blocks); else sharded so
that each device holds the source block its grown shard needs. `compose_state` then builds every grown
shard on its own host from the source shard on the same device, table by table (counter-based random
values, so they do not depend on the mesh); `save` commits the checkpoint. So the grown state is the only
state held (plus one table in flight), no array is gathered whole on one host, and nothing is compiled
for `carry`.
"""
import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.checkpoints import weights
from tokenformer_jax.data import pipeline
from tokenformer_jax.errors import UserError
from tokenformer_jax.model import transformer as model_lib
from tokenformer_jax.model.pattention import wang_std
from tokenformer_jax.runtime import sharding
from tokenformer_jax.runtime import workdir_lock
from tokenformer_jax.training import growth_layout
from tokenformer_jax.training import state as state_lib
from tokenformer_jax.training.growth_compose import Leaf, compose, source_target

def _leaves(cfg_b, g: growth_layout.Growth, d_src: int, abstract_params) -> dict[str, Leaf]:
  """How each grown parameter is made, by its path ('blocks/mlp/key_tokens')."""
  m, grow = cfg_b.model, cfg_b.growth
  value_std = m.value_init_std or wang_std(m.num_layers, m.d_model)
  out = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    name = store.path_string(path)
    parts = tuple(name.split('/'))
    axes = growth_layout.array_axes(parts, g, d_src)
    std = growth_layout.init_std(parts, m, value_std)
    splits = any(a is not None and a.split and a.copies > 1 for a in axes)
    stacked = growth_layout.is_stacked(parts)
    out[name] = Leaf(
        name, axes, g.block_sources() if stacked else None, g.keeps_block_order,
        scale=growth_layout.weight_scale(axes, g.width),
        noise_std=grow.width_noise * std if splits and stacked else 0.0,
        new_block_std=0.0 if growth_layout.writes_residual(parts) else std,
        new_unit_std=growth_layout.new_unit_std(parts, m, value_std, grow.policy) if stacked else 0.0,
        seed=grow.seed)
  return out


def _moment_leaf(param: Leaf, moment: str, width: int) -> Leaf:
  """A parameter's Adam moment: its copies scaled as the gradient is (growth_layout), new positions 0."""
  first = growth_layout.moment_scale(param.axes, width)
  return dataclasses.replace(param, scale=first if moment == 'mu' else first * first, noise_std=0.0,
                             new_block_std=0.0, new_unit_std=0.0)


def _leaf_for(p, name: str) -> Leaf | None:
  """The Leaf of a state path: a parameter, a moment of one, or None (a scalar such as a count)."""
  parts = name.split('/')
  if parts[0] == 'params':
    return p.leaves['/'.join(parts[1:])]
  for moment in ('mu', 'nu'):
    if moment in parts:
      return _moment_leaf(p.leaves['/'.join(parts[parts.index(moment) + 1:])], moment, p.growth.width)
  return None


@dataclasses.dataclass
class Plan:
  """A checked growth of SRC's checkpoint `step` into DST, before any array is read."""
  src: Any                  # the source workdir's CheckpointManager (None: a released file)
  step: int
  dst: Any                  # the destination's (empty) CheckpointManager
  cfg: ml_collections.ConfigDict      # B's config with τ settled (run_record.for_growth)
  growth: growth_layout.Growth
  leaves: dict              # parameter path → growth_compose.Leaf
  spec: state_lib.StateSpec
  data_iter: Any            # restored with the state: the data position goes on
  meta: dict                # saved with the grown checkpoint
  source: Any = None        # weights.Source when only parameters are read (an import or a file)


def plan(cfg_b, src_workdir: str, dst_workdir: str, step: int | None = None, mesh=None) -> Plan:
  """Every check of a growth (source step, empty destination, same tokenizer, a change GROWTH_RULES
  allows). The source is a workdir (trained, grown or imported) or a released checkpoint file. `mesh`:
  B's, where the caller has built it (a staged run), else made from cfg_b.mesh."""
  if os.path.isfile(src_workdir):
    return _plan_from_params(cfg_b, weights.open_source(src_workdir, cfg_b, step), dst_workdir, mesh)
  src = store.manager(src_workdir, create=False)
  step = store.choose_step(src, step, f'--grow_from={src_workdir}:{step}')   # as training chooses
  if step is None:
    raise UserError(f'no checkpoint to grow in {src_workdir}')
  if all(path.startswith('params/') for path in store.saved_shapes(src, step)):
    return _plan_from_params(cfg_b, weights.open_source(src_workdir, cfg_b, step), dst_workdir, mesh)
  meta_s = store.read_meta(src, step)
  return _make_plan(cfg_b, meta_s['config']['model'], meta_s, meta_s['vocab_size'], dst_workdir, mesh,
                    src, step, os.path.abspath(src_workdir))


def _plan_from_params(cfg_b, source, dst_workdir: str, mesh) -> Plan:
  """A source with parameters only (an imported checkpoint, a released file): the grown state gets
  Adam moments of zero and step 0, and the data iterator starts at the beginning. A file says its
  token counts but not its heads, so it grows in tokens only (the config gives its other sizes)."""
  if source.is_file:
    embedding = source.state_dict.get('sequential.0.word_embeddings.weight')
    layers = sum(1 for name in source.state_dict if name.endswith('.attention.query.key_param_tokens'))
    m = cfg_b.model
    if embedding is not None and (layers, np.shape(embedding)[1]) != (m.num_layers, m.d_model):
      raise UserError(f'{source.text} has {layers} layers of d_model {np.shape(embedding)[1]}, the config '
                      f'{m.num_layers} of {m.d_model}: a released file grows in parameter tokens only; '
                      f'import it (--mode=convert with its own sizes), then grow that workdir')
  return _make_plan(cfg_b, source.model, source.meta, source.vocab_size, dst_workdir, mesh, None,
                    source.step or 0, source.path, source)


def _make_plan(cfg_b, model_s, meta_s, vocab, dst_workdir, mesh, src, step, src_path, source=None) -> Plan:
  dst = store.manager(dst_workdir, keep=cfg_b.train.keep_checkpoints, create=False,
                      compress=cfg_b.train.checkpoint_compression)
  if dst.latest_step() is not None:
    raise UserError(f'{dst_workdir} already holds a checkpoint; grow into a new workdir')
  grown_cfg = run_record.for_growth(model_s, meta_s, cfg_b)
  mesh = sharding.make_mesh(cfg_b.mesh) if mesh is None else mesh
  spec_b = state_lib.make_spec(grown_cfg, vocab, mesh)
  g = growth_layout.from_configs(model_s, grown_cfg.model, cfg_b.growth.depth_placement)
  leaves = _leaves(grown_cfg, g, int(model_s['d_model']), spec_b.abstract['params'])
  meta = run_record.grown_meta(grown_cfg, vocab, meta_s)
  meta['grown_from'] = {'workdir': src_path, 'step': step, **g.record(),
                        'policy': cfg_b.growth.policy, 'optimizer': cfg_b.growth.optimizer,
                        'depth_placement': cfg_b.growth.depth_placement}
  return Plan(src, step, dst, grown_cfg, g, leaves, spec_b, pipeline.Position(), meta, source)


def _targets(p: Plan, only_params: bool):
  """(targets, expected): what Orbax reads the source into (growth_compose.source_target) and the shapes
  the checkpoint must hold (the source's), as trees like the state (or {'params'})."""
  abstract = state_lib.abstract_targets(p.spec)
  if only_params:
    abstract = {'params': abstract['params']}

  def one(path, target):
    leaf = _leaf_for(p, store.path_string(path))
    if leaf is None:
      return target, jax.ShapeDtypeStruct(target.shape, target.dtype)
    shape, sharding_src = source_target(leaf, target.shape, target.sharding)
    layers = (len(p.growth.layers),) if leaf.blocks is not None else ()
    saved = layers + tuple(size if a is None else a.src
                           for a, size in zip(leaf.axes, target.shape[len(layers):]))
    return (jax.ShapeDtypeStruct(shape, target.dtype, sharding=sharding_src),
            jax.ShapeDtypeStruct(saved, target.dtype))

  pairs = jax.tree_util.tree_map_with_path(one, abstract)
  is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], jax.ShapeDtypeStruct)
  return (jax.tree.map(lambda x: x[0], pairs, is_leaf=is_pair),
          jax.tree.map(lambda x: x[1], pairs, is_leaf=is_pair))


def restore_source(p: Plan):
  """The source state on B's mesh in the source layout (growth_compose): parameters only for a source
  without optimizer state and for `reset`, which starts a fresh one."""
  if p.source is not None:
    logging.warning('%s holds parameters only: the grown state starts with Adam moments of zero, at '
                    'step 0, and its data iterator at the beginning', p.source.text)
    targets, expected = _targets(p, only_params=True)
    return {'params': weights.read_params(p.source, p.spec, targets['params'], expected['params'])}
  targets, expected = _targets(p, only_params=p.cfg.growth.optimizer == 'reset')
  return store.restore(p.src, p.step, targets, p.data_iter, expected=expected)


def compose_state(p: Plan, restored: dict):
  """The grown state from restore_source's, array by array; `restored` is consumed (emptied), so each
  source array is dropped once its grown one is built and at most one table is held twice. `reset`
  (and a parameters-only source) gets a fresh optimizer state and step 0."""
  grown_abstract = state_lib.abstract_targets(p.spec)
  flat, treedef = jax.tree_util.tree_flatten_with_path(restored)
  restored.clear()
  targets = dict((store.path_string(path), t) for path, t in
                 jax.tree_util.tree_flatten_with_path(grown_abstract)[0])
  out = []
  for i, (path, _) in enumerate(flat):
    name = store.path_string(path)
    source, flat[i] = flat[i][1], None
    leaf, target = _leaf_for(p, name), targets[name]
    out.append(source if leaf is None else compose(leaf, source, target.shape, target.sharding))
    del source
  state = jax.tree.unflatten(treedef, out)
  if p.source is None and p.cfg.growth.optimizer == 'carry':
    return state
  return state_lib.from_params(p.spec, state['params'])


def save(p: Plan, state_b) -> int:
  """Commits the grown state (and the data position) as DST's first checkpoint; returns its step."""
  new_step = int(state_b['step'])
  store.save(p.dst, new_step, state_b, p.data_iter, p.meta)
  m = p.cfg.model
  logging.info('grew %s step %d into %s step %d: %d layers, d_model %d, tokens %s (from %s), policy %s, '
               'optimizer %s', p.source.text if p.source is not None else p.src.directory, p.step,
               p.dst.directory, new_step, m.num_layers, m.d_model, model_lib.token_counts(m),
               p.meta['grown_from'], p.cfg.growth.policy, p.cfg.growth.optimizer)
  return new_step


def grow(cfg_b, src_workdir: str, dst_workdir: str, step: int | None = None, mesh=None) -> int:
  """Grows SRC's checkpoint (latest, or `step`) into a checkpoint of cfg_b in DST; returns its step."""
  with workdir_lock.hold(dst_workdir):
    p = plan(cfg_b, src_workdir, dst_workdir, step, mesh)
    return save(p, compose_state(p, restore_source(p)))
