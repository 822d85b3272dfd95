"""Orbax checkpoints: train state, data-iterator state and run metadata; strict restore onto any mesh.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta, digests}. Orbax writes each step into a temporary
folder and renames it when complete, so a save killed midway is never listed as a checkpoint (and its
folder is removed when a training run next opens the workdir).

Training saves asynchronously: `save(..., wait=False)` returns once the arrays are copied to host
memory (so the train step may donate their buffers), and Orbax writes and commits them in the
background while training goes on; the next save, and `finish`, wait for that commit first.

Restore is strict: before reading any array, every saved array's path and shape are compared with the
target (the saved config was reconciled before, run_record.py); any difference is a UserError naming the
parameter and both shapes.
There is one restore, `restore`, onto explicit targets: abstract arrays carrying the current mesh's
shardings, so Orbax reads each shard straight onto its devices (a checkpoint saved on another mesh is
resharded on the way in). The targets say what is read: the whole train state, or only {'params'} (for
inference, from a training checkpoint or an imported one). Growth reads into targets of other shapes: it
passes the shapes the checkpoint must hold (`expected`), which are checked as strictly, and Orbax
zero-pads a target longer than saved while reading.

What a checkpoint records of its run (`meta`) and what a later run may change is run_record.py's; the
store saves the meta it is given.

After reading, every array is checked against the digest saved with it (digests.py), so array bytes
damaged on disk are the same corrupt-checkpoint error as a truncated file, not NaN losses or garbage
samples. Checkpoints written before digests were kept restore unchecked (the log says so).
"""
import contextlib
import errno
import json
import os
import shutil
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from tokenformer_jax.checkpoints import digests
from tokenformer_jax.errors import UserError

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


# TensorStore's status codes for files that are missing or hold other bytes than were written (a deleted
# or truncated file, a chunk that does not decode). Other codes (RESOURCE_EXHAUSTED, INVALID_ARGUMENT of
# a sharding, ...) say nothing about the checkpoint.
_DAMAGE_STATUS = ('NOT_FOUND:', 'DATA_LOSS:', 'OUT_OF_RANGE:')


class DamagedArrays(Exception):
  """Restored arrays whose values differ from the digests written when they were saved."""


def _damage(error: BaseException | None) -> BaseException | None:
  """The error in `error`'s chain of causes that says the checkpoint's files are damaged (missing,
  truncated, undecodable, not what was written), or None: Orbax wraps a TensorStore read error in a
  plain Exception raised from it."""
  while error is not None:
    if isinstance(error, (DamagedArrays, json.JSONDecodeError, FileNotFoundError, EOFError)) or (
        isinstance(error, ValueError) and str(error).startswith(_DAMAGE_STATUS)):
      return error
    error = error.__cause__
  return None


@contextlib.contextmanager
def _reading(mngr: ocp.CheckpointManager, step: int):
  """A damaged checkpoint's error becomes one UserError naming it and the older steps to fall back on;
  any other failure (out of memory, a sharding the devices cannot take, a bug) keeps its own."""
  try:
    yield
  except Exception as e:
    damage = _damage(e)
    if damage is None:
      raise
    older = sorted(s for s in mngr.all_steps() if s < step)
    detail = ' '.join(str(damage).split('See full')[0].split())[:200]
    hint = (f'choose an older one with --restore_step (available: {older})' if older
            else 'no older checkpoint to fall back on')
    raise UserError(f'checkpoint {mngr.directory}/{step} is corrupt or truncated '
                    f'({type(damage).__name__}: {detail}); {hint}') from e


def choose_step(mngr: ocp.CheckpointManager, restore_step: int | None, asked_by: str = '') -> int | None:
  """The latest checkpoint, or the requested one (which must exist); `asked_by` is the flag that asked
  for it, as the user wrote it (default: --restore_step=N)."""
  steps = mngr.all_steps()
  if restore_step is None:
    return max(steps) if steps else None
  if restore_step not in steps:
    raise UserError(f'{asked_by or f"--restore_step={restore_step}"}: no such checkpoint in {mngr.directory} '
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
  with _reading(mngr, step):
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def path_string(path) -> str:
  """'params/blocks/mlp/key_tokens': dicts and named tuples spell alike (Orbax saves optimizer named
  tuples as dicts)."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def _by_path(tree) -> dict[str, Any]:
  return {path_string(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _paths_and_shapes(tree) -> dict[str, tuple]:
  return {path: tuple(leaf.shape) for path, leaf in _by_path(tree).items()}


def saved_shapes(mngr: ocp.CheckpointManager, step: int) -> dict[str, tuple]:
  with _reading(mngr, step):
    state = mngr.item_metadata(step)['state']
    if state is None:   # its metadata file is gone
      raise FileNotFoundError(f'no array metadata in {mngr.directory}/{step}/state')
    return _paths_and_shapes(state.tree)


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
  with _reading(mngr, step):
    missing = [name for name in items if not (mngr.directory / str(step) / name).exists()]
    if missing:
      raise FileNotFoundError(f'no {", ".join(missing)} in {mngr.directory}/{step}')
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
    if verified:
      _verify(restored[DIGESTS], restored.state)
    if data_iter is not None:
      data_iter.set_state(restored.data)
    return restored.state


def _verify(saved_digests: dict, state) -> None:
  bad = digests.mismatches(saved_digests, _by_path(state))
  if bad:
    shown = ', '.join(bad[:3]) + (f' and {len(bad) - 3} more' if len(bad) > 3 else '')
    plural = 's' if len(bad) > 1 else ''
    raise DamagedArrays(f'the digest written at save differs for {len(bad)} array{plural}: {shown}')
