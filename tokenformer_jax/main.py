"""Entry point: python -m tokenformer_jax.main --config=experiments/tiny.py --workdir=DIR [--mode=train].

Config overrides use ml_collections flags (--config.model.num_layers=4); the config is locked, so an
unknown key is an error. Bad input ends with one line on stderr naming the problem and exit status 2.
A training run stopped by SIGTERM (on any of its processes) saves one agreed step and exits with status
143, by Ctrl-C with 130; rerunning resumes it. docs/reliability.md lists every exit status.
"""
import logging as std_logging
import os
import sys
from collections.abc import Collection

from absl import app, flags, logging
from ml_collections import config_flags

from tokenformer_jax.errors import UserError, fail, parse_flags
from tokenformer_jax.runtime import platforms
from tokenformer_jax.runtime import process_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the data cache go.')
MODES = ('train', 'compile', 'grow', 'generate', 'eval', 'convert', 'export')
_MODE = flags.DEFINE_enum('mode', 'train', MODES,
                          'train; compile (the train step, ahead of time, for --topology); grow; '
                          'generate; eval; convert (import a released reference checkpoint); export '
                          '(a checkpoint to the reference format).')

# --- multi-process runtime (automatic on TPU pods and under SLURM): runtime/process_flags.py ---

# --- compile ---
_TOPOLOGY = flags.DEFINE_string('topology', None, 'A TPU slice (v5p:2x2x1, v5e:4x4, ...) or GPUs (h100:8, '
                                'h200:8, a100-80g:8; h100:2x8 is 2 hosts of 8).')

# --- train ---
_STOP_AT = flags.DEFINE_integer('stop_at_step', None,
                                'Exit (after saving) at this step, before train.steps.')
_RESTORE_STEP = flags.DEFINE_integer(
    'restore_step', None, 'The checkpoint of --workdir to load instead of the latest (e.g. to skip a '
    'corrupt one): train resumes from it (setting newer ones aside), generate, eval and export read it.')
_INIT_FROM = flags.DEFINE_string(
    'init_from', None, 'A fresh run starts from these parameters (step 0, fresh optimizer and data): '
    'a workdir, WORKDIR:STEP, or a released .safetensors/.bin/.pt file. Ignored once the workdir has '
    'checkpoints (the run resumes them).')
_ACCEPT_DATA = flags.DEFINE_bool(
    'accept_data_change', False, 'Resume although seq_len, batch size, seed or data changed; the data '
    'iterator then starts again (see resume.py).')

# --- generate (from the latest checkpoint, or --restore_step); unset: the config's sampling.* ---
_PROMPT = flags.DEFINE_string('prompt', None, 'Text to continue.')
_PROMPT_FILE = flags.DEFINE_string('prompt_file', None, 'One prompt per line, generated in batches.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', None, 'New tokens per prompt (fewer at end-of-text); '
                                'sets sampling.max_new_tokens.')
_TEMPERATURE = flags.DEFINE_float('temperature', None, '0: greedy; sets sampling.temperature.')
_TOP_K = flags.DEFINE_integer('top_k', None, 'Sample among the k most likely ids (0: all); sets '
                              'sampling.top_k.')
_TOP_P = flags.DEFINE_float('top_p', None, 'Sample within the top-p probability mass (1: all); sets '
                            'sampling.top_p.')
_SAMPLE_SEED = flags.DEFINE_integer('sample_seed', None, 'Seed of the sampler; sets sampling.seed.')
# flag → the config key it sets
_SAMPLING_FLAGS = {'max_new_tokens': 'max_new_tokens', 'temperature': 'temperature', 'top_k': 'top_k',
                   'top_p': 'top_p', 'sample_seed': 'seed'}

# --- eval ---
_EVAL_FILE = flags.DEFINE_string('eval_file', None, 'UTF-8 text to evaluate (default: the validation split).')

# --- convert (import a released PyTorch checkpoint) ---
_REFERENCE_FILE = flags.DEFINE_string('reference_file', None, 'The .safetensors, .bin or .pt to import.')

# --- export (a checkpoint to the reference format) ---
_EXPORT_FILE = flags.DEFINE_string('export_file', None, 'The .safetensors file to write.')
_EXPORT_DTYPE = flags.DEFINE_enum('export_dtype', 'float32', ['float32', 'bfloat16'], 'Exported dtype.')
_ALLOW_TAU = flags.DEFINE_bool('allow_tau_change', False,
                               'Export a model with τ frozen by growth anyway (the reference uses τ = √n).')
_EXPORT_ROTARY = flags.DEFINE_bool('export_rotary_buffers', False,
                                   'Also export the rotary inv_freq buffers, which only a reference model '
                                   'built with rotary_save_freqs_buffer loads.')

# --- grow ---
_GROW_FROM = flags.DEFINE_string('grow_from', None, 'What --mode=grow grows into --workdir: a workdir (its '
                                 'latest checkpoint), WORKDIR:STEP, or a released .safetensors/.bin/.pt file.')

# Every flag above and process_flags', and where it means something: the modes, plus STAGED for a
# training run with config.stages (stages.py runs each stage itself, from its own workdir). A flag the
# user gives outside its modes is refused (check_flags), so no flag is accepted and then ignored.
STAGED = 'train with config.stages'
_ALL = MODES + (STAGED,)
_RUNTIME = tuple(m for m in _ALL if m != 'compile')   # every mode that starts the runtime
APPLIES_TO: dict[str, Collection[str]] = {
    'config': _ALL, 'mode': _ALL, 'workdir': _RUNTIME,
    'coordinator_address': _RUNTIME, 'num_processes': _RUNTIME, 'process_id': _RUNTIME,
    'distributed_timeout_s': _RUNTIME, 'heartbeat_timeout_s': _RUNTIME,
    'topology': ('compile',),
    'stop_at_step': ('train',), 'init_from': ('train',), 'accept_data_change': ('train', STAGED),
    'restore_step': ('train', 'generate', 'eval', 'export'),
    'prompt': ('generate',), 'prompt_file': ('generate',), **{name: ('generate',) for name in _SAMPLING_FLAGS},
    'eval_file': ('eval',),
    'reference_file': ('convert',),
    'export_file': ('export',), 'export_dtype': ('export',), 'allow_tau_change': ('export',),
    'export_rotary_buffers': ('export',),
    'grow_from': ('grow',),
}


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax and grain (one line per file written); warnings still pass, except the
  tracebacks that Orbax's threads, and asyncio for Orbax's writer tasks, log for a full disk: the run
  reports it in its one error line."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = any(f'{os.sep}{name}{os.sep}' in record.pathname for name in ('orbax', 'grain'))
    if (noisy or record.name == 'asyncio') and record.exc_info:
      from tokenformer_jax.checkpoints import store   # already loaded: only a run that saves gets here
      if store.out_of_space(record.exc_info[1]):
        return False
    return record.levelno >= std_logging.WARNING or not noisy


def _unraisable(unraisable) -> None:
  """sys.unraisablehook without the noise of a failed save: when one write of an Orbax save fails, Orbax
  stops waiting and closes its event loop, and TensorStore then cannot report each write still in flight
  to it ('Event loop is closed', once per write). The failure itself is reported (one error line)."""
  error, tb = unraisable.exc_value, unraisable.exc_traceback
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  abandoned_write = (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
                     and tb is not None and tb.tb_frame.f_code.co_name == '_check_closed')
  if not abandoned_write:
    sys.__unraisablehook__(unraisable)


def _where(applies: Collection[str]) -> str:
  return ', '.join('a staged run' if m == STAGED else f'--mode={m}' for m in applies)


def check_flags(mode: str, staged: bool) -> None:
  """Refuses every flag the user gave (FLAGS[name].present) that `mode` would not use; a training run
  with config.stages (`staged`) takes only the flags marked STAGED."""
  where = STAGED if mode == 'train' and staged else mode
  wrong = [name for name, applies in APPLIES_TO.items()
           if flags.FLAGS[name].present and where not in applies]
  if wrong:
    target = 'a staged run (config.stages is set)' if where == STAGED else f'--mode={mode}'
    raise UserError('; '.join(f'--{name} does not apply to {target} (only to {_where(APPLIES_TO[name])})'
                              for name in wrong))


def _run_flags() -> dict:
  """This command's flags that every process of a run must share (all but --process_id)."""
  return process_flags.shared(v for v in globals().values() if isinstance(v, flags.FlagHolder))


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  from tokenformer_jax import config as config_lib
  try:
    cfg = config_lib.from_flag(_CONFIG)
    check_flags(_MODE.value, bool(cfg.stages))
  except UserError as e:
    fail(e)
  for name, key in _SAMPLING_FLAGS.items():
    if flags.FLAGS[name].present:
      cfg.sampling[key] = flags.FLAGS[name].value
  if _MODE.value == 'compile':  # no workdir, data or runtime: compiles for chips this machine lacks
    from tokenformer_jax.runtime import aot
    try:
      aot.run(cfg, _TOPOLOGY.value)
    except UserError as e:
      fail(str(e))
    return
  if not _WORKDIR.value:
    fail('--workdir is required')
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  sys.unraisablehook = _unraisable
  status, message = _run(cfg, os.path.abspath(_WORKDIR.value))
  if message:
    print(message, file=sys.stderr, flush=True)
  if status:
    sys.exit(status)


def _run(cfg, workdir: str) -> tuple[int, str]:
  """Runs the mode; returns its exit status and a last line for stderr. A training command leaves its
  outcome in WORKDIR/status (run_status.py), unless it was refused before training."""
  # imported after flag parsing: keeps --help fast
  from tokenformer_jax.runtime import distributed
  from tokenformer_jax.runtime import preemption
  from tokenformer_jax.telemetry import run_status
  from tokenformer_jax.training import periodic

  def record(exit_status: int) -> None:
    if _MODE.value == 'train':
      run_status.write(workdir, exit_status)

  status, message = 1, ''   # an exception that escapes: a bug
  try:
    process_flags.join(on_peer_lost=record)
    distributed.agree({'config': cfg.to_dict(), 'workdir': workdir, 'flags': _run_flags()})
    status = _dispatch(cfg, workdir)
    record(status)
  except UserError as e:   # bad input: one line, status 2; on record only if the run had trained
    status, message = 2, f'error: {" ".join(str(e).split())}'
    if isinstance(e, periodic.Diverged):
      record(status)
  except KeyboardInterrupt:   # Ctrl-C outside the training steps (they save first: preemption.py)
    status, message = preemption.EXIT_INTERRUPTED, 'stopped by Ctrl-C'
    record(status)
  except Exception:
    distributed.check_peers()   # a collective that failed because a process died ends here, in one line
    record(status)
    raise
  finally:
    distributed.leave(status)
  return status, message


def _dispatch(cfg, workdir: str) -> int:
  """The mode's work; returns the exit status (0, or a stopped training run's)."""
  from tokenformer_jax.training import growth
  from tokenformer_jax.training import loop
  from tokenformer_jax.training import stages
  if _MODE.value == 'train' and cfg.stages:
    last = stages.run(cfg, workdir, accept_data_change=_ACCEPT_DATA.value)[-1]
    return last.exit_status
  if _MODE.value == 'train':
    return loop.train(cfg, workdir, stop_at_step=_STOP_AT.value, restore_step=_RESTORE_STEP.value,
                       accept_data_change=_ACCEPT_DATA.value, init_from=_INIT_FROM.value or '').exit_status
  if _MODE.value == 'grow':
    from tokenformer_jax.checkpoints import weights
    if not _GROW_FROM.value:
      raise UserError('--mode=grow needs --grow_from=SOURCE (a workdir, WORKDIR:STEP or a released file)')
    source, step = weights.split_step(_GROW_FROM.value)
    growth.grow(cfg, source, workdir, step=step)
  elif _MODE.value == 'generate':
    from tokenformer_jax.inference import generate
    s = cfg.sampling
    generate.run(cfg, workdir, generate.read_prompts(_PROMPT.value, _PROMPT_FILE.value), s.max_new_tokens,
                 generate.Sampling.of(s), seed=s.seed, step=_RESTORE_STEP.value)
  elif _MODE.value == 'eval':
    from tokenformer_jax.inference import evaluate
    evaluate.run(cfg, workdir, _EVAL_FILE.value, step=_RESTORE_STEP.value)
  elif _MODE.value == 'convert':
    from tokenformer_jax.checkpoints import reference_import
    reference_import.convert(cfg, workdir, _REFERENCE_FILE.value)
  elif _MODE.value == 'export':
    from tokenformer_jax.checkpoints import reference_export
    reference_export.export(cfg, workdir, _EXPORT_FILE.value, step=_RESTORE_STEP.value,
                  dtype=_EXPORT_DTYPE.value, allow_tau_change=_ALLOW_TAU.value,
                  rotary_buffers=_EXPORT_ROTARY.value)
  return 0


def run():
  platforms.choose()
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
