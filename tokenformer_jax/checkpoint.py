"""Orbax checkpoints: train state, data-iterator state and run metadata; strict restore onto any mesh.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Orbax writes each step into a temporary folder
and renames it when complete, so a save killed midway is never listed as a checkpoint.

Restore is strict: before reading any array, the saved model config and every saved array's path and
shape are compared with the target; any difference is a UserError naming the parameter and both shapes.
Targets are abstract arrays carrying the current mesh's shardings, so Orbax reads each shard straight
onto its devices (a checkpoint saved on another mesh is resharded on the way in).
"""
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from tokenformer_jax.errors import UserError

# Config keys that define the function a checkpoint computes (and its tokenizer); they must match.
MODEL_KEYS = ('kind', 'vocab_size', 'num_layers', 'd_model', 'num_heads', 'n_qkv', 'n_proj', 'n_ffn',
              'n_ref_qkv', 'n_ref_proj', 'n_ref_ffn', 'mlp_dim', 'rotary_pct', 'rotary_base', 'ln_eps')
DATA_KEYS = ('corpus', 'tokenizer', 'vocab_size')


def manager(workdir: str, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options,
                               item_handlers={'state': ocp.StandardCheckpointHandler(),
                                              'data': grain.checkpoint.CheckpointHandler(),
                                              'meta': ocp.JsonCheckpointHandler()})


def run_meta(cfg, vocab_size: int) -> dict:
  """What is saved beside the arrays: the config (as JSON) and the model's padded vocab size."""
  return {'config': cfg.to_dict(), 'vocab_size': vocab_size}


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def check_config(saved_meta: dict, cfg, step: int) -> None:
  """Refuses a checkpoint whose model (or tokenizer) config differs from the current one."""
  saved = saved_meta['config']
  diffs = []
  for section, keys in (('model', MODEL_KEYS), ('data', DATA_KEYS)):
    for key in keys:
      old, new = saved.get(section, {}).get(key), cfg[section][key]
      if old != new:
        diffs.append(f'{section}.{key}: checkpoint {old!r}, config {new!r}')
  if diffs:
    raise UserError(f'the workdir holds a checkpoint (step {step}) of a different model config; use '
                    f'another --workdir or the same config. Differences: ' + '; '.join(diffs))


def _key_name(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _paths_and_shapes(tree) -> dict[str, tuple]:
  """'params/blocks/mlp/key_tokens' → shape; named tuples and dicts spell paths alike (Orbax saves
  optimizer named tuples as dicts)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(_key_name(e) for e in path): tuple(leaf.shape) for path, leaf in flat}


def check_shapes(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> None:
  """Every saved array must exist in the target with the same shape, and vice versa."""
  saved_tree = mngr.item_metadata(step)['state'].tree
  saved = _paths_and_shapes(saved_tree)
  wanted = _paths_and_shapes(abstract_state)
  problems = []
  for path in sorted(set(saved) | set(wanted), key=lambda p: (not p.startswith('params'), p)):
    if path not in saved:
      problems.append(f'{path} missing from the checkpoint (model wants {wanted[path]})')
    elif path not in wanted:
      problems.append(f'{path} in the checkpoint {saved[path]} is not in the model')
    elif saved[path] != wanted[path]:
      problems.append(f'{path}: checkpoint {saved[path]}, model {wanted[path]}')
  if problems:
    shown = '; '.join(problems[:8]) + (f'; and {len(problems) - 8} more' if len(problems) > 8 else '')
    raise UserError(f'checkpoint step {step} does not match the model: {shown}')


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter, meta: dict,
         force: bool = False) -> None:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter),
      meta=ocp.args.JsonSave(meta)), force=force)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, step: int, targets: Any, data_iter=None):
  """Restores the state onto `targets`' shardings (after check_shapes) and the iterator in place."""
  check_shapes(mngr, step, targets)
  items = {'state': ocp.args.StandardRestore(targets)}
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  return mngr.restore(step, args=ocp.args.Composite(**items)).state
