"""Orbax checkpoints: train state, data-iterator state and run metadata; strict restore onto any mesh.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta, digests}. Orbax writes each step into a temporary
folder and renames it when complete, so a save killed midway is never listed as a checkpoint (and its
folder is removed when a training run next opens the workdir).

Training saves asynchronously: `save(..., wait=False)` returns once the arrays are copied to host
memory (so the train step may donate their buffers), and Orbax writes and commits them in the
background while training goes on; the next save, and `finish`, wait for that commit first.

Restore is strict: before reading any array, the saved model config and every saved array's path and
shape are compared with the target; any difference is a UserError naming the parameter and both shapes.
There is one restore, `restore`, onto explicit targets: abstract arrays carrying the current mesh's
shardings, so Orbax reads each shard straight onto its devices (a checkpoint saved on another mesh is
resharded on the way in). The targets say what is read: the whole train state, or only {'params'} (for
inference, from a training checkpoint or an imported one). Growth reads into targets of other shapes: it
passes the shapes the checkpoint must hold (`expected`), which are checked as strictly, and Orbax
zero-pads a target longer than saved while reading.

Which model keys a growth may change, and how, is stated once, in GROWTH_RULES (`growth_differences`).

After reading, every array is checked against the digest saved with it (digests.py), so array bytes
damaged on disk are the same corrupt-checkpoint error as a truncated file, not NaN losses or garbage
samples. Checkpoints written before digests were kept restore unchecked (the log says so).
"""
import contextlib
import errno
import os
import shutil
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from tokenformer_jax import config as config_lib
from tokenformer_jax.checkpoints import digests
from tokenformer_jax.errors import UserError
from tokenformer_jax.model import transformer as model_lib

# Model keys growth sets: τ frozen at the count before growth.
N_REF_KEYS = tuple(f'n_ref_{group}' for group in model_lib.TOKEN_GROUPS)
# The model keys a growth (--mode=grow, a stage) may change, and how; every other key that defines the
# function must stay (model_differences). 'more': at least the checkpoint's. 'width': d_model times an
# integer k ≥ 1. 'heads': num_heads times the same k (heads keep their size). 'mlp': the dense MLP's
# width (mlp_dim, 0 meaning 4·d_model) at least k times the checkpoint's. 'settled': set by the growth
# policy (frozen τ), not by the config.
GROWTH_RULES = {'num_layers': 'more', 'd_model': 'width', 'num_heads': 'heads', 'mlp_dim': 'mlp',
                **{f'n_{group}': 'more' for group in model_lib.TOKEN_GROUPS},
                **{key: 'settled' for key in N_REF_KEYS}}
# The item holding the arrays' digests (digests.py); checkpoints written before it have none.
DIGESTS = 'digests'


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, reporting a full disk as a UserError that names the checkpoint and the space it
  needs, whether the write fails inside the save call (sync) or in the background (async: it surfaces
  at the next save or wait, and is named as the step it was writing)."""

  _in_flight = None   # (step, bytes of its arrays) of the last save started

  def save(self, step, *args, **kwargs):
    self.wait_until_finished()   # a failed background write is reported as its own step
    items = kwargs.get('args')
    state = items.get('state') if items is not None else None
    self._in_flight = (step, _tree_bytes(state.item) if state is not None else 0)
    with self._naming_a_full_disk():
      return super().save(step, *args, **kwargs)

  def wait_until_finished(self):
    with self._naming_a_full_disk():
      super().wait_until_finished()

  @contextlib.contextmanager
  def _naming_a_full_disk(self):
    try:
      yield
    except Exception as e:   # Orbax re-raises the writer's error (TensorStore's ValueError, OSError)
      reason = out_of_space(e)
      if reason is None or self._in_flight is None:
        raise
      raise UserError(_disk_full_message(self, reason, *self._in_flight)) from e


def _tree_bytes(tree) -> int:
  return sum(getattr(leaf, 'nbytes', 0) for leaf in jax.tree.leaves(tree))


def out_of_space(error: BaseException | None) -> str | None:
  """The OS's words for a full disk or quota ('No space left on device') when that is what `error`,
  or an error it was raised from, reports; TensorStore gives it as text, with the errno."""
  while error is not None:
    for code in (errno.ENOSPC, errno.EDQUOT):
      if (isinstance(error, OSError) and error.errno == code) or os.strerror(code) in str(error) \
          or f"os_error_code='{code}'" in str(error):
        return os.strerror(code)
    error = error.__cause__ or error.__context__
  return None


def _disk_full_message(mngr: ocp.CheckpointManager, reason: str, step: int, n_bytes: int) -> str:
  where = str(mngr.directory)
  free = f', {shutil.disk_usage(where).free / 2**20:.1f} MiB free there' if os.path.isdir(where) else ''
  kept = mngr.latest_step()
  last = (f'the newest complete checkpoint, step {kept}, is intact: rerun to resume from it' if kept
          is not None else 'no checkpoint was completed: rerun to start again')
  return (f'{reason} while writing checkpoint {where}/{step}: it needs about {n_bytes / 2**20:.1f} MiB '
          f'({n_bytes} bytes, the size of the state){free}; older checkpoints are removed only after a '
          f'new one is complete. Make room; {last}')


def manager(workdir: str, keep: int = 3, create: bool = True, async_save: bool = False,
            cleanup: bool = False, compress: bool = False) -> ocp.CheckpointManager:
  """A manager of WORKDIR/checkpoints. `async_save`: saves return before the write (see `save`);
  `cleanup` (a training run, holding the workdir's lock): removes the temporary folders of saves a
  crash cut short; `compress`: zstd on the arrays (reading takes either). A save that finds the disk
  full is a UserError naming the checkpoint and the space it needs (_Manager).

  Every checkpoint (trained, grown, converted) is written the same way: uncompressed unless
  train.checkpoint_compression, because float32 weights barely compress while zstd multiplies the
  write's host CPU, which competes with the train step (measured: docs/reliability.md)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                         enable_async_checkpointing=async_save,
                                         cleanup_tmp_directories=cleanup)
  return _Manager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
                  item_handlers={'state': ocp.PyTreeCheckpointHandler(use_compression=compress),
                                 'data': ocp.JsonCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler(),
                                 DIGESTS: ocp.JsonCheckpointHandler()})


def run_meta(cfg, vocab_size: int, tokenizer=None) -> dict:
  """What is saved beside the arrays: the config (as JSON), the model's padded vocab size and the
  sha256 and size of the tokenizer whose ids it was trained on (the size says what model.vocab_size=0
  means for this checkpoint, see resolved_vocab)."""
  meta = {'config': cfg.to_dict(), 'vocab_size': vocab_size}
  if tokenizer is not None:
    meta['tokenizer_sha256'] = tokenizer.sha256
    meta['tokenizer_vocab_size'] = tokenizer.vocab_size
  return meta


def check_tokenizer(saved_meta: dict, tokenizer, step: int) -> None:
  """Refuses a tokenizer other than the checkpoint's (when the checkpoint names one)."""
  saved = saved_meta.get('tokenizer_sha256')
  if saved and saved != tokenizer.sha256:
    raise UserError(f'checkpoint step {step} was trained with tokenizer sha256 {saved}, but this run\'s '
                    f'tokenizer is sha256 {tokenizer.sha256}: its ids mean other pieces')


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
  if not later:
    return
  if jax.process_index() == 0:  # one process renames (the workdir is shared); the others wait for it
    stamp = int(time.time())
    for s in later:
      path = os.path.join(str(mngr.directory), str(s))
      os.rename(path, f'{path}.set-aside-{stamp}')
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('tokenformer_jax.set_aside_later')
  mngr.reload()


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  try:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  except Exception as e:  # Orbax/JSON/TensorStore errors of a damaged checkpoint
    raise _unreadable(mngr, step, e) from e


def adopt_frozen_tau(cfg, saved_meta: dict) -> ml_collections.ConfigDict:
  """A copy of cfg that takes the checkpoint's frozen-τ counts (n_ref_*) where cfg leaves them at 0.

  τ frozen by growth is a property of the trained model, so the config a grown run was started with
  (which does not mention it) resumes, samples and evaluates it; an explicit, different value is still
  refused by check_config."""
  saved_model = saved_meta['config'].get('model', {})
  out = ml_collections.ConfigDict(cfg.to_dict())
  for key in N_REF_KEYS:
    if not out.model[key] and saved_model.get(key):
      out.model[key] = saved_model[key]
  out.lock()
  return out


def resolved_vocab(m, saved_meta: dict) -> int | None:
  """The padded vocabulary that model config m means with the checkpoint's tokenizer
  (config.padded_vocab): an explicit model.vocab_size rounded up to 128, 0 the tokenizer's size rounded
  up. None where m leaves it to the tokenizer and the checkpoint does not say what that came to (one
  saved before run_meta recorded the tokenizer's size, with an explicit model.vocab_size)."""
  tokenizer_vocab = saved_meta.get('tokenizer_vocab_size')
  if m.vocab_size or tokenizer_vocab is not None:
    return config_lib.padded_vocab(m, tokenizer_vocab or 0)
  if not saved_meta['config'].get('model', {}).get('vocab_size'):
    return saved_meta['vocab_size']     # 0 then and now: the same tokenizer's size (sha256-checked)
  return None


def model_differences(saved_model: dict, m, ignore: tuple = (), saved_meta: dict | None = None) -> list[str]:
  """'model.KEY: checkpoint OLD, config NEW' for every model key that defines the function and
  differs: all keys but config.RUNTIME_MODEL_KEYS, INIT_MODEL_KEYS and `ignore`. A key the checkpoint's
  config lacks (saved before the key existed) counts as its base_config default. Given the checkpoint's
  `saved_meta`, model.vocab_size is compared by what it resolves to (resolved_vocab) against the padded
  vocabulary the checkpoint was built with, so 0 and the size it stands for are the same model."""
  defaults = config_lib.base_config().model
  skip = set(config_lib.RUNTIME_MODEL_KEYS) | set(config_lib.INIT_MODEL_KEYS) | set(ignore)
  diffs = []
  for key in m.keys():
    if key in skip:
      continue
    old = saved_model.get(key, defaults.get(key))
    if key == 'vocab_size' and saved_meta is not None:
      now = resolved_vocab(m, saved_meta)
      if now == saved_meta['vocab_size']:
        continue
      if now is not None:
        diffs.append(f'model.{key}: checkpoint {old!r}, config {m[key]!r} (padded vocab: checkpoint '
                     f'{saved_meta["vocab_size"]}, config {now})')
        continue
    if old != m[key]:
      diffs.append(f'model.{key}: checkpoint {old!r}, config {m[key]!r}')
  return diffs


def growth_differences(saved_model: dict, m, saved_meta: dict | None = None) -> list[str]:
  """Every way config m is not a growth of the checkpoint's model (GROWTH_RULES): model_differences
  over the keys a growth may not change, then each rule; 'model.KEY: checkpoint OLD, config NEW: why'."""
  defaults = config_lib.base_config().model
  diffs = model_differences(saved_model, m, ignore=tuple(GROWTH_RULES), saved_meta=saved_meta)
  old = {key: saved_model.get(key, defaults.get(key)) for key in GROWTH_RULES}
  width, remainder = divmod(m.d_model, old['d_model'])
  mlp_old, mlp_new = old['mlp_dim'] or 4 * old['d_model'], m.mlp_dim or 4 * m.d_model
  for key, rule in GROWTH_RULES.items():
    why = None
    if rule == 'more' and m[key] < old[key]:
      why = 'a growth cannot make it smaller'
    elif rule == 'width' and (remainder or width < 1):
      why = 'width grows by an integer factor'
    elif rule == 'heads' and not remainder and width >= 1 and m[key] != width * old[key]:
      why = (f'heads keep their size (d_model/num_heads = {old["d_model"] // old[key]}), so with d_model '
             f'×{width} num_heads must be {width * old[key]}')
    elif rule == 'mlp' and m.kind == 'dense' and not remainder and width >= 1 and mlp_new < width * mlp_old:
      why = f'the MLP width (mlp_dim, 0: 4·d_model) must be at least ×{width} the checkpoint\'s {mlp_old}'
    if why:
      diffs.append(f'model.{key}: checkpoint {old[key]!r}, config {m[key]!r}: {why}')
  return diffs


def check_config(saved_meta: dict, cfg, step: int) -> None:
  """Refuses a checkpoint whose model config differs from cfg (see adopt_frozen_tau for the frozen-τ
  counts a grown checkpoint carries; the tokenizer is checked by its sha256, check_tokenizer)."""
  saved = saved_meta['config']
  diffs = model_differences(saved.get('model', {}), cfg.model, saved_meta=saved_meta)
  if diffs:
    raise UserError(f'the workdir holds a checkpoint (step {step}) of a different model config; use '
                    f'another --workdir or the same config. Differences: ' + '; '.join(diffs))


def path_string(path) -> str:
  """'params/blocks/mlp/key_tokens': dicts and named tuples spell alike (Orbax saves optimizer named
  tuples as dicts)."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def _by_path(tree) -> dict[str, Any]:
  return {path_string(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _paths_and_shapes(tree) -> dict[str, tuple]:
  return {path: tuple(leaf.shape) for path, leaf in _by_path(tree).items()}


def saved_shapes(mngr: ocp.CheckpointManager, step: int) -> dict[str, tuple]:
  try:
    return _paths_and_shapes(mngr.item_metadata(step)['state'].tree)
  except Exception as e:
    raise _unreadable(mngr, step, e) from e


def check_shapes(mngr: ocp.CheckpointManager, step: int, targets: Any, expected: Any = None) -> None:
  """Every saved array must exist in the target with the same shape (or the shape `expected` gives it,
  a tree like targets), and vice versa; targets of {'params'} alone are compared with the saved
  'params/...' arrays only."""
  saved = saved_shapes(mngr, step)
  if set(targets) == {'params'}:
    saved = {p: s for p, s in saved.items() if p.startswith('params/')}
  elif set(saved) and all(p.startswith('params/') for p in saved):
    raise UserError(f'checkpoint step {step} holds parameters only (an imported checkpoint, see '
                    f'--mode=convert): it can be sampled (--mode=generate) and evaluated (--mode=eval), '
                    f'not resumed for training')
  wanted = _paths_and_shapes(targets if expected is None else expected)
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
         force: bool = False, wait: bool = True) -> None:
  """Saves state, the data position and meta; data_iter=None (an imported checkpoint) saves no position.
  The position (data_iter.state()) is global, the same on every process, so any process count can
  resume it. wait=False (an async manager): returns once the arrays are on the host; the step is
  listed only after its background commit."""
  items = {'state': ocp.args.PyTreeSave(state), 'meta': ocp.args.JsonSave(meta),
           DIGESTS: ocp.args.JsonSave(digests.record(_by_path(state)))}
  if data_iter is not None:
    items['data'] = ocp.args.JsonSave(data_iter.state())
  mngr.save(step, args=ocp.args.Composite(**items), force=force)
  if wait:
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, step: int, targets: Any, data_iter=None, *,
            expected: Any = None):
  """The checkpoint's arrays, read onto `targets`' shapes and shardings after check_shapes; restores
  `data_iter` in place when given. Targets are the whole train state or {'params': ...}. Growth gives
  `expected`, the shapes the checkpoint must hold (a tree like targets): a target longer than that gets
  zeros past the saved values as it is read (padding is allowed here only, after the explicit check)."""
  check_shapes(mngr, step, targets, expected)
  restore_args = jax.tree.map(
      lambda t: ocp.ArrayRestoreArgs(global_shape=t.shape, dtype=t.dtype, sharding=t.sharding,
                                     strict=expected is None), targets)
  items = {'state': ocp.args.PyTreeRestore(item=targets, restore_args=restore_args,
                                           partial_restore=set(targets) == {'params'})}
  if data_iter is not None:
    items['data'] = ocp.args.JsonRestore()
  verified = (mngr.directory / str(step) / DIGESTS).exists()
  if verified:
    items[DIGESTS] = ocp.args.JsonRestore()
  else:
    logging.info('checkpoint step %d has no array digests (written before they were kept): its array '
                 'data is not verified', step)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
    if verified:
      _verify(restored[DIGESTS], restored.state)
    if data_iter is not None:
      data_iter.set_state(restored.data)
    return restored.state
  except Exception as e:  # Orbax/TensorStore errors, or digests, of a damaged checkpoint
    raise _unreadable(mngr, step, e) from e


class DamagedArrays(Exception):
  """Restored arrays whose values differ from the digests written when they were saved."""


def _verify(saved_digests: dict, state) -> None:
  bad = digests.mismatches(saved_digests, _by_path(state))
  if bad:
    shown = ', '.join(bad[:3]) + (f' and {len(bad) - 3} more' if len(bad) > 3 else '')
    plural = 's' if len(bad) > 1 else ''
    raise DamagedArrays(f'the digest written at save differs for {len(bad)} array{plural}: {shown}')
