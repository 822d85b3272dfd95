"""The training loop, phase by phase: config → mesh → data → state (init or restore) → steps → save.

Running the same command on the same workdir resumes from the latest checkpoint (parameters, optimizer
state, step and data-iterator position), so an interrupted run continues exactly where it stopped.
A workdir holding a checkpoint of a different model is refused before anything in it is touched.
"""
import dataclasses
import sys
import time
from typing import Any

import jax
from absl import logging
from jax.sharding import Mesh
from tqdm import tqdm

from tokenformer_jax import config as config_lib
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.checkpoints import weights
from tokenformer_jax.data import dataset as dataset_lib, pipeline
from tokenformer_jax.errors import UserError
from tokenformer_jax.model import flops
from tokenformer_jax.runtime import preemption as preemption_lib
from tokenformer_jax.runtime import sharding
from tokenformer_jax.runtime import workdir_lock
from tokenformer_jax.telemetry import chips
from tokenformer_jax.telemetry import goodput
from tokenformer_jax.telemetry import metrics
from tokenformer_jax.telemetry import profiling
from tokenformer_jax.telemetry import step_clock
from tokenformer_jax.training import hooks as hooks_lib
from tokenformer_jax.training import periodic
from tokenformer_jax.training import state as state_lib
from tokenformer_jax.training import step as step_lib


@dataclasses.dataclass
class RunResult:
  """What a call to `train` leaves behind, for callers and tests."""
  state: dict
  step: int
  train_losses: dict          # step → loss of that step
  val_losses: dict            # step → validation loss
  cfg: Any = None             # the config the run trained with (the checkpoint's frozen τ adopted)
  sample: str = ''
  preempted: bool = False     # stopped by SIGTERM or Ctrl-C after saving
  exit_status: int = 0        # 0, or preemption.EXIT_PREEMPTED / EXIT_INTERRUPTED when preempted


@dataclasses.dataclass
class RunSetup:
  """Everything a run needs before its first step."""
  cfg: Any                  # the run's config, with the checkpoint's frozen τ adopted
  mngr: Any
  step: int | None          # the checkpoint to restore (None: start fresh)
  saved_meta: dict | None   # that checkpoint's metadata
  data: dataset_lib.RunData
  spec: state_lib.StateSpec
  restart_data: bool = False  # an accepted change of data settings: the iterator starts again
  init_source: Any = None     # a fresh run's weights.Source (--init_from)


def setup_run(cfg, mesh: Mesh, workdir: str, restore_step: int | None = None,
              accept_data_change: bool = False, init_from: str = '') -> RunSetup:
  """Checks the workdir's checkpoint (or the --init_from source of a fresh run) against cfg (which
  `check` validated), builds corpus and state spec on `mesh`."""
  mngr = store.manager(workdir, keep=cfg.train.keep_checkpoints, create=False,
                            async_save=cfg.train.async_checkpointing, cleanup=True,
                            compress=cfg.train.checkpoint_compression)
  step = store.choose_step(mngr, restore_step)
  saved_meta, restart_data = None, False
  if step is not None:  # refuse a different model before the data cache can be rebuilt
    saved_meta = store.read_meta(mngr, step)
    cfg, restart_data = run_record.for_resume(saved_meta, cfg, step, accept_data_change)
    if init_from:
      logging.info('%s holds checkpoints: resuming them (--init_from=%s starts fresh runs only)',
                   workdir, init_from)
  init_source = None
  if step is None and init_from:  # its checks stand in for a resume's: same model, same tokenizer
    init_source = weights.open_source(init_from, cfg)
    cfg, saved_meta = run_record.for_init(init_source.model, init_source.meta, cfg, init_source.text)
  grown_from = (saved_meta or {}).get('grown_from')
  if cfg.growth.freeze_old and not grown_from:
    raise UserError('growth.freeze_old needs a grown checkpoint in the workdir (see --mode=grow)')
  run_data = dataset_lib.open_run_data(cfg.data, workdir, record=saved_meta)
  vocab = config_lib.padded_vocab(cfg.model, run_data.vocab_size)
  spec = state_lib.make_spec(cfg, vocab, mesh, grown_from=grown_from if cfg.growth.freeze_old else None)
  return RunSetup(cfg, mngr, step, saved_meta, run_data, spec, restart_data, init_source)


def train(cfg, workdir: str, stop_at_step: int | None = None, restore_step: int | None = None,
          accept_data_change: bool = False, init_from: str = '') -> RunResult:
  """Trains to cfg.train.steps (or stop_at_step), resuming from the workdir's latest checkpoint
  (or from `restore_step`: later checkpoints are then set aside, never deleted). A resume with other
  data settings is refused unless `accept_data_change` (run_record.py). A fresh run with `init_from` starts
  from that source's parameters (weights.py). One run per workdir: a second one is refused while this
  one holds the lock."""
  started = time.perf_counter(), time.time()   # start-up and goodput count from here
  if stop_at_step is not None and stop_at_step < 1:
    raise UserError(f'--stop_at_step must be positive, got {stop_at_step}')
  mesh = check(cfg)  # before the lock: a refused run writes nothing
  return train_checked(cfg, mesh, workdir, stop_at_step, restore_step, accept_data_change, init_from,
                       started)


def check(cfg) -> Mesh:
  """Validates cfg (the one validation of a run's config) and refuses what no run of it could do,
  before anything is written; returns the run's mesh."""
  config_lib.validate(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  check_batch(cfg, mesh)
  metrics.check(cfg.metrics)
  return mesh


def train_checked(cfg, mesh: Mesh, workdir: str, stop_at_step: int | None = None,
                  restore_step: int | None = None, accept_data_change: bool = False, init_from: str = '',
                  started: tuple | None = None) -> RunResult:
  """`train` of a config `check` accepted, on the mesh it returned."""
  started = started or (time.perf_counter(), time.time())
  with workdir_lock.hold(workdir):
    return _train(cfg, mesh, workdir, stop_at_step, restore_step, accept_data_change, init_from, started)


def check_batch(cfg, mesh: Mesh) -> None:
  """The global batch splits evenly over processes and over the mesh's batch axes."""
  t, n_proc = cfg.train, jax.process_count()
  if t.batch_size % n_proc:
    raise UserError(f'train.batch_size={t.batch_size} is not divisible by {n_proc} processes')
  sharding.check_batch(mesh, cfg.sharding_rules, t.batch_size, t.grad_accum)


@dataclasses.dataclass
class _Run:
  """A run at its first step: the setup, the state and where the steps start and end."""
  setup: RunSetup
  state: Any
  start: int
  end: int
  train_iter: Any
  meta: dict
  val_batches: list | None    # this process's rows of each validation batch (None: no validation data)
  step_flops: float
  peak: float | None          # the chips' peak FLOP/s, for MFU (None: unknown)


def _train(cfg, mesh, workdir: str, stop_at_step: int | None, restore_step: int | None,
           accept_data_change: bool, init_from: str, started: tuple) -> RunResult:
  run = _start(setup_run(cfg, mesh, workdir, restore_step, accept_data_change, init_from), workdir,
               stop_at_step)
  cfg, spec, t = run.setup.cfg, run.setup.spec, run.setup.cfg.train
  train_step = step_lib.make_train_step(spec, cfg)
  result = RunResult(state=run.state, step=run.start, train_losses={}, val_losses={}, cfg=cfg)
  account = goodput.Goodput(workdir, run.start, start_time=started[1], record=run.start < run.end)
  clock = step_clock.StepClock(start=started[0])
  bar = tqdm(total=run.end, initial=run.start, desc='train', unit='step', file=sys.stderr,
             disable=jax.process_index() != 0 or run.start >= run.end, dynamic_ncols=True)
  writer = metrics.MetricsWriter(workdir, cfg.metrics, cfg.to_dict(),   # None: trains nothing
                                 start_step=run.start if run.start < run.end else None)
  profiler = profiling.Profiler(t, workdir)
  log = periodic.LogWindow(clock, account, writer, bar, result, t.batch_size * cfg.data.seq_len,
                           run.step_flops, run.peak)
  saves = periodic.Checkpoints(run.setup.mngr, run.train_iter, run.meta, clock, t.async_checkpointing)
  preemption = preemption_lib.Preemption(run.setup.mngr)
  hooks = _add_hooks(run, log, saves, periodic.ProfileWindow(profiler, clock),
                     periodic.Stop(preemption, result), clock, writer, bar, result)
  clock.add('startup', time.perf_counter() - started[0])   # config, data, restore or init
  # (the first batch's fetch counts as waiting for data, the first step's compilation as start-up)
  # try/finally: whatever ends the loop, a save still being written commits (or the last one stays).
  try:
    with preemption:
      info = _steps(run, hooks, periodic.timed_first_call(train_step, clock, started[0]), clock)
    saves.wait()
    log.finish(info.step, trained=run.start < run.end)
  finally:
    account.close()
    run.setup.mngr.wait_until_finished()
    profiler.close()
    bar.close()
    writer.close()
  result.state, result.step = info.state, int(info.state['step'])
  hooks.run_end(info)
  return result


def _steps(run: _Run, hooks: hooks_lib.Hooks, train_step, clock) -> hooks_lib.StepInfo:
  """The loop: a batch, a step, the hooks; until run.end or a hook says stop. Returns the last StepInfo
  (the state and step it ended with)."""
  spec, cfg, train_iter = run.setup.spec, run.setup.cfg, run.train_iter
  info = hooks_lib.StepInfo(run.start, run.end, run.state, None)
  for step in range(run.start, run.end):
    batch = clock.fetch(lambda: step_lib.global_batch(spec, cfg, next(train_iter)),
                        info.metrics and info.metrics['loss'])
    hooks.run_before(step)
    state, step_metrics = train_step(info.state, batch)
    info = hooks.run_after(hooks_lib.StepInfo(step + 1, run.end, state, step_metrics))
    if info.stopping:
      break
  return info


def _add_hooks(run: _Run, log, saves, profile, stop, clock, writer, bar, result) -> hooks_lib.Hooks:
  """The run's periodic actions, in the order they run within a step: divergence is read before the log
  and before any save (a diverged state is never saved), the evaluation runs before the save, and the
  stop (SIGTERM, Ctrl-C) is known before the save it forces."""
  spec, cfg, t = run.setup.spec, run.setup.cfg, run.setup.cfg.train
  divergence = periodic.Divergence(spec.mesh, run.setup.mngr)
  saving = hooks_lib.every(t.checkpoint_every, at_end=True, on_stop=True)
  log_due = hooks_lib.every(t.log_every)
  hooks = hooks_lib.Hooks()
  hooks.before_step(profile.start, profile.starts_at)
  hooks.add(log.count)
  hooks.add(divergence.track)
  hooks.add(profile.stop, profile.ends_after)
  hooks.add(stop.check)
  hooks.add(divergence.check, lambda info: saving(info) or log_due(info))
  hooks.add(log.write, hooks_lib.every(t.log_every, at_end=True))
  hooks.add(log.progress)
  if run.val_batches is not None:
    hooks.add(periodic.Evaluation(spec, cfg, run.val_batches, clock, writer, bar, result),
              hooks_lib.every(t.eval_every, at_end=True))
  hooks.add(saves.save, saving)
  hooks.add(stop.announce, lambda info: info.stopping)
  hooks.at_end(periodic.Sample(spec, cfg, run.setup.data.tokenizer, result))
  return hooks


def _start(setup: RunSetup, workdir: str, stop_at_step: int | None) -> _Run:
  """The state to start from (restored, from --init_from's parameters, or initialised), the data
  iterator and validation batches, and what is saved beside the state."""
  cfg, spec, t = setup.cfg, setup.spec, setup.cfg.train
  n_proc, proc = jax.process_count(), jax.process_index()
  seq_len = cfg.data.seq_len
  train_iter = pipeline.BatchIterator(setup.data.train_stream(seq_len, cfg.seed, t.batch_size),
                                      t.batch_size, proc, n_proc)
  val_batches = _validation_batches(setup.data, seq_len, t)
  meta = run_record.run_meta(cfg, spec.vocab_size, setup.data.tokenizer)
  for key in run_record.PROVENANCE:  # where the weights came from stays on record
    if key in (setup.saved_meta or {}):
      meta[key] = setup.saved_meta[key]
  if setup.step is not None:
    state = store.restore(setup.mngr, setup.step, state_lib.abstract_targets(spec),
                          None if setup.restart_data else train_iter)
    store.set_aside_later(setup.mngr, setup.step)
    logging.info('resumed from step %d in %s', setup.step, workdir)
  elif setup.init_source is not None:
    state = state_lib.from_params(spec, weights.read_params(setup.init_source, spec))
    meta['initialized_from'] = setup.init_source.describe()
    logging.info('starting from the parameters of %s (step 0, a fresh optimizer state and data iterator)',
                 setup.init_source.text)
  else:
    state = state_lib.init_state(spec, cfg)
  start = int(state['step'])
  end = min(t.steps, stop_at_step) if stop_at_step else t.steps
  step_flops = flops.train_flops_per_token(cfg.model, spec.vocab_size, seq_len) * t.batch_size * seq_len
  peak, peak_source = chips.peak_flops(t.peak_tflops, spec.mesh.devices.flatten().tolist())
  if proc == 0:
    logging.info('%s model: %.2fM parameters, %.3f GFLOP per step, mesh %s; MFU peak: %s', cfg.model.kind,
                 state_lib.num_params(spec) / 1e6, step_flops / 1e9, dict(spec.mesh.shape), peak_source)
  return _Run(setup, state, start, end, train_iter, meta, val_batches, step_flops, peak)


def _validation_batches(run_data, seq_len: int, t) -> list | None:
  """This process's rows of the validation batches; None (said once) when there is no validation data.
  Rows are split over processes so each global batch holds every row once."""
  proc, local_batch = jax.process_index(), t.batch_size // jax.process_count()
  validation = run_data.validation(seq_len)
  if validation is None:
    if proc == 0:
      logging.warning('%s: training without evaluation (name a prepared validation dataset with '
                      'data.validation=DIR to evaluate)', run_data.no_validation_reason())
    return None
  val_rows = pipeline.eval_batches(validation, t.batch_size, t.eval_batches)
  return [b[proc * local_batch:(proc + 1) * local_batch] for b in val_rows]
