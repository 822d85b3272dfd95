"""Orbax checkpoints: train state, data-iterator state and run metadata; strict restore onto any mesh.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Orbax writes each step into a temporary folder
and renames it when complete, so a save killed midway is never listed as a checkpoint.

Restore is strict: before reading any array, the saved model config and every saved array's path and
shape are compared with the target; any difference is a UserError naming the parameter and both shapes.
Targets are abstract arrays carrying the current mesh's shardings, so Orbax reads each shard straight
onto its devices (a checkpoint saved on another mesh is resharded on the way in).
"""
import os
import time
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


def _unreadable(mngr: ocp.CheckpointManager, step: int, error: Exception) -> UserError:
  older = sorted(s for s in mngr.all_steps() if s < step)
  detail = ' '.join(str(error).split('See full')[0].split())[:200]
  hint = (f'choose an older one with --restore_step (available: {older})' if older
          else 'no older checkpoint to fall back on')
  return UserError(f'checkpoint {mngr.directory}/{step} is corrupt or truncated '
                   f'({type(error).__name__}: {detail}); {hint}')


def choose_step(mngr: ocp.CheckpointManager, restore_step: int | None) -> int | None:
  """The latest checkpoint, or the requested one (which must exist)."""
  steps = mngr.all_steps()
  if restore_step is None:
    return max(steps) if steps else None
  if restore_step not in steps:
    raise UserError(f'--restore_step={restore_step}: no such checkpoint in {mngr.directory} '
                    f'(available: {sorted(steps)})')
  return restore_step


def set_aside_later(mngr: ocp.CheckpointManager, step: int) -> None:
  """Renames checkpoints newer than `step` (e.g. a corrupt one the user skipped) so training from
  `step` can save those step numbers again; nothing is deleted."""
  later = [s for s in mngr.all_steps() if s > step]
  for s in later:
    path = os.path.join(str(mngr.directory), str(s))
    os.rename(path, f'{path}.set-aside-{int(time.time())}')
  if later:
    mngr.reload()


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  try:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  except Exception as e:  # Orbax/JSON/TensorStore errors of a damaged checkpoint
    raise _unreadable(mngr, step, e) from e


def check_config(saved_meta: dict, cfg, step: int) -> None:
  """Refuses a checkpoint whose model (or tokenizer) config differs from the current one.

  τ frozen by growth is a property of the model: a config that leaves n_ref_* at 0 first takes the
  checkpoint's values (an explicit, different value is still refused)."""
  saved_model = saved_meta['config'].get('model', {})
  for key in ('n_ref_qkv', 'n_ref_proj', 'n_ref_ffn'):
    if not cfg.model[key] and saved_model.get(key):
      cfg.model[key] = saved_model[key]
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


def key_name(entry) -> str:
  """One entry of a pytree path as plain text (dict key, attribute name or index)."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def path_string(path) -> str:
  """'params/blocks/mlp/key_tokens': dicts and named tuples spell alike (Orbax saves optimizer named
  tuples as dicts)."""
  return '/'.join(key_name(e) for e in path)


def _paths_and_shapes(tree) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_string(path): tuple(leaf.shape) for path, leaf in flat}


def saved_shapes(mngr: ocp.CheckpointManager, step: int) -> dict[str, tuple]:
  try:
    return _paths_and_shapes(mngr.item_metadata(step)['state'].tree)
  except Exception as e:
    raise _unreadable(mngr, step, e) from e


def check_shapes(mngr: ocp.CheckpointManager, step: int, abstract_state: Any,
                 params_only: bool = False, grows_tokens: bool = False) -> None:
  """Every saved array must exist in the target with the same shape, and vice versa (params_only:
  only the saved 'params/...' arrays are compared). With `grows_tokens`, a parameter-token table (and
  its optimizer moments) may instead be longer along its token axis (axis 1), and nothing else."""
  saved = saved_shapes(mngr, step)
  if params_only:
    saved = {p: s for p, s in saved.items() if p.startswith('params/')}
  elif set(saved) and all(p.startswith('params/') for p in saved):
    raise UserError(f'checkpoint step {step} holds parameters only (an imported checkpoint, see '
                    f'--mode=convert): it can be sampled (--mode=generate) and evaluated (--mode=eval), '
                    f'not resumed for training')
  wanted = _paths_and_shapes(abstract_state)
  problems = []
  for path in sorted(set(saved) | set(wanted), key=lambda p: (not p.startswith('params'), p)):
    if path not in saved:
      problems.append(f'{path} missing from the checkpoint (model wants {wanted[path]})')
    elif path not in wanted:
      problems.append(f'{path} in the checkpoint {saved[path]} is not in the model')
    elif saved[path] != wanted[path] and not (grows_tokens and _longer_token_axis(
        path, saved[path], wanted[path])):
      problems.append(f'{path}: checkpoint {saved[path]}, model {wanted[path]}')
  if problems:
    shown = '; '.join(problems[:8]) + (f'; and {len(problems) - 8} more' if len(problems) > 8 else '')
    raise UserError(f'checkpoint step {step} does not match the model: {shown}')


def _longer_token_axis(path: str, old: tuple, new: tuple) -> bool:
  return (path.endswith('_tokens') and len(old) == len(new) >= 2 and old[1] < new[1]
          and old[:1] == new[:1] and old[2:] == new[2:])


def restore_grown(mngr: ocp.CheckpointManager, step: int, targets: Any, data_iter=None):
  """Restores a checkpoint into targets whose token tables are longer (see check_shapes): Orbax pads
  the new rows with zeros while reading, straight into the targets' shardings, so the grown state is
  the only copy ever held. Padding is allowed here only, after the explicit shape check."""
  check_shapes(mngr, step, targets, grows_tokens=True)
  padded = ocp.CheckpointManager(
      mngr.directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True),
      item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                     'data': grain.checkpoint.CheckpointHandler()})
  restore_args = jax.tree.map(
      lambda t: ocp.ArrayRestoreArgs(global_shape=t.shape, dtype=t.dtype, sharding=t.sharding,
                                     strict=False), targets)
  items = {'state': ocp.args.PyTreeRestore(item=targets, restore_args=restore_args)}
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    return padded.restore(step, args=ocp.args.Composite(**items)).state
  except Exception as e:  # Orbax/TensorStore errors of a damaged checkpoint
    raise _unreadable(mngr, step, e) from e


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter, meta: dict,
         force: bool = False) -> None:
  """Saves state, iterator and meta; data_iter=None (an imported checkpoint) saves no iterator."""
  items = {'state': ocp.args.StandardSave(state), 'meta': ocp.args.JsonSave(meta)}
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iter)
  mngr.save(step, args=ocp.args.Composite(**items), force=force)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, step: int, targets: Any, data_iter=None):
  """Restores the state onto `targets`' shardings (after check_shapes) and the iterator in place."""
  check_shapes(mngr, step, targets)
  items = {'state': ocp.args.StandardRestore(targets)}
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    return mngr.restore(step, args=ocp.args.Composite(**items)).state
  except UserError:
    raise
  except Exception as e:  # Orbax/TensorStore errors of a damaged checkpoint
    raise _unreadable(mngr, step, e) from e


def restore_params(mngr: ocp.CheckpointManager, step: int, targets_params: Any):
  """Restores only the parameters onto `targets_params`' shardings, from a full train state or an
  imported params-only checkpoint (the optimizer state is never read)."""
  check_shapes(mngr, step, {'params': targets_params}, params_only=True)
  path = os.path.join(str(mngr.directory), str(step), 'state')
  target = {'params': targets_params}
  args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                partial_restore=True)
  try:
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
      return ckptr.restore(path, args=args)['params']
  except Exception as e:  # Orbax/TensorStore errors of a damaged checkpoint
    raise _unreadable(mngr, step, e) from e
