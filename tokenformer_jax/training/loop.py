"""The training loop, phase by phase: config → mesh → data → state (init or restore) → steps → save.

Running the same command on the same workdir resumes from the latest checkpoint (parameters, optimizer
state, step and data-iterator position), so an interrupted run continues exactly where it stopped.
A workdir holding a checkpoint of a different model is refused before anything in it is touched.
"""
import dataclasses
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from tqdm import tqdm

from tokenformer_jax import config as config_lib
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.checkpoints import weights
from tokenformer_jax.data import dataset as dataset_lib, pipeline
from tokenformer_jax.errors import UserError
from tokenformer_jax.inference import generate
from tokenformer_jax.model import flops
from tokenformer_jax.runtime import preemption as preemption_lib
from tokenformer_jax.runtime import sharding
from tokenformer_jax.runtime import workdir_lock
from tokenformer_jax.telemetry import chips
from tokenformer_jax.telemetry import goodput
from tokenformer_jax.telemetry import metrics
from tokenformer_jax.telemetry import profiling
from tokenformer_jax.telemetry import step_clock
from tokenformer_jax.training import state as state_lib
from tokenformer_jax.training import step as step_lib
# a run stopped by SIGTERM (143) or Ctrl-C (130) after saving exits with these (see preemption.py)
from tokenformer_jax.runtime.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED  # noqa: F401


class Diverged(UserError):
  """A non-finite loss or gradient norm: the run trained and then failed (not a refusal of its input)."""


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
class Prepared:
  """Everything a run needs before its first step."""
  cfg: Any                  # the run's config, with the checkpoint's frozen τ adopted
  mngr: Any
  step: int | None          # the checkpoint to restore (None: start fresh)
  saved_meta: dict | None   # that checkpoint's metadata
  data: dataset_lib.RunData
  spec: state_lib.StateSpec
  restart_data: bool = False  # an accepted change of data settings: the iterator starts again
  init_source: Any = None     # a fresh run's weights.Source (--init_from)


def prepare(cfg, workdir: str, restore_step: int | None = None, accept_data_change: bool = False,
            init_from: str = '') -> Prepared:
  """Validates, checks the workdir's checkpoint (or the --init_from source of a fresh run) against
  cfg, builds corpus, mesh and state spec."""
  config_lib.validate(cfg)
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
  mesh = sharding.make_mesh(cfg.mesh)
  spec = state_lib.make_spec(cfg, vocab, mesh, grown_from=grown_from if cfg.growth.freeze_old else None)
  return Prepared(cfg, mngr, step, saved_meta, run_data, spec, restart_data, init_source)


def evaluate(eval_step, spec, cfg, params, batches) -> float:
  total, count = 0.0, 0
  for tokens in batches:
    total += float(eval_step(params, step_lib.global_batch(spec, cfg, tokens)))
    count += tokens.shape[0] * (tokens.shape[1] - 1) * jax.process_count()
  return total / count


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
  config_lib.validate(cfg)
  check_batch(cfg)  # before the lock: a refused run writes nothing
  metrics.check(cfg.metrics)
  with workdir_lock.hold(workdir):
    return _train(cfg, workdir, stop_at_step, restore_step, accept_data_change, init_from, started)


def check_batch(cfg) -> None:
  """The global batch splits evenly over processes and over the mesh's batch axes."""
  t, n_proc = cfg.train, jax.process_count()
  if t.batch_size % n_proc:
    raise UserError(f'train.batch_size={t.batch_size} is not divisible by {n_proc} processes')
  sharding.check_batch(sharding.make_mesh(cfg.mesh), cfg.sharding_rules, t.batch_size, t.grad_accum)


def _train(cfg, workdir: str, stop_at_step: int | None, restore_step: int | None,
           accept_data_change: bool, init_from: str, started: tuple) -> RunResult:
  prep = prepare(cfg, workdir, restore_step, accept_data_change, init_from)
  cfg, mngr, latest, run_data, spec = prep.cfg, prep.mngr, prep.step, prep.data, prep.spec
  t = cfg.train
  n_proc, proc = jax.process_count(), jax.process_index()
  local_batch = t.batch_size // n_proc
  seq_len = cfg.data.seq_len
  train_iter = pipeline.BatchIterator(run_data.train_stream(seq_len, cfg.seed, t.batch_size),
                                      t.batch_size, proc, n_proc)
  val_batches = _validation_batches(run_data, seq_len, t, proc, local_batch)
  meta = run_record.run_meta(cfg, spec.vocab_size, run_data.tokenizer)
  for key in run_record.PROVENANCE:  # where the weights came from stays on record
    if key in (prep.saved_meta or {}):
      meta[key] = prep.saved_meta[key]

  # ---- state: restore or init ----
  if latest is not None:
    state = store.restore(mngr, latest, state_lib.abstract_targets(spec),
                               None if prep.restart_data else train_iter)
    store.set_aside_later(mngr, latest)
    logging.info('resumed from step %d in %s', latest, workdir)
  elif prep.init_source is not None:
    state = state_lib.from_params(spec, weights.read_params(prep.init_source, spec))
    meta['initialized_from'] = prep.init_source.describe()
    logging.info('starting from the parameters of %s (step 0, a fresh optimizer state and data iterator)',
                 prep.init_source.text)
  else:
    state = state_lib.init_state(spec, cfg)
  start = int(state['step'])
  end = min(t.steps, stop_at_step) if stop_at_step else t.steps

  n_params = state_lib.num_params(spec)
  step_flops = flops.train_flops_per_token(cfg.model, spec.vocab_size, seq_len) * t.batch_size * seq_len
  peak, peak_source = chips.peak_flops(t.peak_tflops, spec.mesh.devices.flatten().tolist())
  if proc == 0:
    logging.info('%s model: %.2fM parameters, %.3f GFLOP per step, mesh %s; MFU peak: %s', cfg.model.kind,
                 n_params / 1e6, step_flops / 1e9, dict(spec.mesh.shape), peak_source)

  train_step = step_lib.make_train_step(spec, cfg)
  eval_step = step_lib.make_eval_step(spec, cfg)
  result = RunResult(state=state, step=start, train_losses={}, val_losses={}, cfg=cfg)
  tokens_per_step = t.batch_size * seq_len
  account = goodput.Goodput(workdir, start, start_time=started[1], record=start < end)
  clock = step_clock.StepClock(start=started[0])

  # ---- steps ----
  # The first step whose loss or gradient norm is not finite, tracked on the device (no sync per step)
  # and read before every save and log: a diverged state is never saved, so rotation keeps a good one.
  first_bad = jax.jit(lambda: jnp.int32(-1), out_shardings=sharding.replicated(spec.mesh))()
  track_bad = jax.jit(lambda first, m, step: jnp.where(
      (first < 0) & ~(jnp.isfinite(m['loss']) & jnp.isfinite(m['grad_norm'])), step, first))
  bar = tqdm(total=end, initial=start, desc='train', unit='step', disable=proc != 0 or start >= end,
             dynamic_ncols=True, file=sys.stderr)
  writer = metrics.MetricsWriter(workdir, cfg.metrics, cfg.to_dict(),
                                 start_step=start if start < end else None)   # None: trains nothing
  profiler = profiling.Profiler(t, workdir)
  window_steps, step_metrics, done = 0, None, start
  clock.add('startup', time.perf_counter() - started[0])   # config, data, restore or init
  # (the first batch's fetch counts as waiting for data, the first step's compilation as start-up)
  # try/finally: whatever ends the loop, a save still being written commits (or the last one stays).
  try:
    with preemption_lib.Preemption(mngr) as preemption:
      for step in range(start, end):
        batch = clock.fetch(lambda: step_lib.global_batch(spec, cfg, next(train_iter)),
                            step_metrics and step_metrics['loss'])
        if profiler.starts_at(step):
          with clock.measure('profile'):
            profiler.start(step)
        if step == start:   # the first call traces and compiles: start-up
          compile_start = time.perf_counter()
          state, step_metrics = train_step(state, batch)
          clock.add('startup', time.perf_counter() - compile_start)
          if proc == 0:
            logging.info('start-up: %.1f s to the first step (config, data, state), %.1f s compiling it',
                         compile_start - started[0], time.perf_counter() - compile_start)
        else:
          state, step_metrics = train_step(state, batch)
        window_steps += 1
        done = step + 1
        first_bad = track_bad(first_bad, step_metrics, done)
        if profiler.ends_at(step):
          jax.block_until_ready(state)   # the window's device work, inside the trace
          with clock.measure('profile'):
            profiler.stop()
        preempted = preemption.reached(done)
        saving = done % t.checkpoint_every == 0 or done == end or preempted
        evaluating = val_batches is not None and (done % t.eval_every == 0 or done == end)
        if saving or done % t.log_every == 0:
          _stop_if_diverged(int(first_bad), mngr)
        if done % t.log_every == 0 or done == end:
          scalars = {k: float(v) for k, v in step_metrics.items()}   # waits for the window's steps
          scalars.update(_close_window(clock, account, done, window_steps, tokens_per_step * window_steps,
                                       step_flops * window_steps, peak))
          window_steps = 0
          result.train_losses[done] = scalars['loss']
          writer.write(done, scalars)
          shown = {'loss': f"{scalars['loss']:.3f}", 'tok_s': f"{scalars['tokens_per_s']:.0f}"}
          if 'mfu' in scalars:
            shown['mfu'] = f"{scalars['mfu']:.1%}"
          bar.set_postfix(shown)
        bar.update(1)
        if evaluating or saving:
          jax.block_until_ready(state)   # the steps' time stays theirs, not the eval's or the save's
        if evaluating:
          with clock.measure('eval'):
            val = evaluate(eval_step, spec, cfg, state['params'], val_batches)
          result.val_losses[done] = val
          writer.write(done, {'val_loss': val, 'val_ppl': math.exp(min(val, 50.0))})
          if proc == 0:
            bar.write(f'step {done}: val loss {val:.4f}, ppl {math.exp(min(val, 50.0)):.2f}')
        if saving:
          # async: returns once the arrays are on the host; waited for at the end or when preempted
          with clock.measure('checkpoint'):
            store.save(mngr, done, state, train_iter, meta,
                            wait=preempted or done == end or not t.async_checkpointing)
        if preempted:
          logging.warning('%s: saved step %d, exiting (status %d: rerun to resume)', preemption.signal_name,
                          done, preemption.exit_status)
          result.preempted, result.exit_status = True, preemption.exit_status
          break
    with clock.measure('checkpoint'):
      mngr.wait_until_finished()
    # the end's evaluation and save (and a preempted run's last steps) close one more window
    final = _close_window(clock, account, done, window_steps, tokens_per_step * window_steps,
                          step_flops * window_steps, peak)
    if start < end:
      writer.write(done, {k: v for k, v in final.items() if k.startswith(('goodput', 'badput', 'time_'))})
      if proc == 0:
        bar.write(goodput.describe(account.summary()))
  finally:
    account.close()
    mngr.wait_until_finished()
    profiler.close()
    bar.close()
    writer.close()
  result.state, result.step = state, int(state['step'])

  # ---- a taste of the model ----
  if t.sample_tokens and result.step == t.steps and not result.preempted:
    result.sample = sample_text(spec, cfg, state['params'], run_data.tokenizer)
    if proc == 0:
      print('--- sample ---\n' + result.sample + '\n--------------', flush=True)
  return result


def _validation_batches(run_data, seq_len: int, t, proc: int, local_batch: int) -> list | None:
  """This process's rows of the validation batches; None (said once) when there is no validation data.
  Rows are split over processes so each global batch holds every row once."""
  validation = run_data.validation(seq_len)
  if validation is None:
    if proc == 0:
      logging.warning('%s: training without evaluation (name a prepared validation dataset with '
                      'data.validation=DIR to evaluate)', run_data.no_validation_reason())
    return None
  val_rows = pipeline.eval_batches(validation, t.batch_size, t.eval_batches)
  return [b[proc * local_batch:(proc + 1) * local_batch] for b in val_rows]


def _close_window(clock, account, done: int, steps: int, tokens: int, flop: float, peak) -> dict:
  """The window's time breakdown, its throughput over the time spent training (train steps and waiting
  for data: evaluation, saves and start-up have columns of their own), MFU where a peak is known, and
  the run's goodput so far."""
  times = clock.close_window()
  account.add_window(done, steps, times)
  out = dict(times)
  training_s = times['time_step_s'] + times['time_data_s']
  if steps and training_s > 0:
    out['tokens_per_s'] = tokens / training_s
    out['gflops_per_s'] = flop / training_s / 1e9
    if peak:
      out['mfu'] = flop / training_s / peak
  summary = account.summary()
  out.update({k: v for k, v in summary.items() if k.startswith(('goodput', 'badput'))})
  return out


def _stop_if_diverged(first_bad: int, mngr) -> None:
  if first_bad >= 0:
    mngr.wait_until_finished()  # the last save (of a finite state) commits before it is named
    kept = mngr.latest_step()
    where = f'the last checkpoint, step {kept}, is kept' if kept is not None else 'nothing was saved'
    raise Diverged(f'the loss or gradient norm is not finite at step {first_bad}; stopped before saving '
                    f'({where}): lower optimizer.lr or raise optimizer.warmup_frac and rerun')


def sample_text(spec, cfg, params, tokenizer) -> str:
  """train.sample_tokens tokens continuing train.sample_prompt (KV-cached, with the train.sample_*
  sampling settings: see generate.py); an empty prompt starts a new document."""
  t = cfg.train
  generator = generate.Generator(spec.graphdef, context=cfg.data.seq_len, vocab_limit=tokenizer.vocab_size,
                                 eos_id=tokenizer.eos_id,
                                 sampling=generate.Sampling(temperature=t.sample_temperature,
                                                            top_k=t.sample_top_k))
  prompt_ids = tokenizer.encode(t.sample_prompt) or [tokenizer.eos_id]
  ids = generator.generate(params, [prompt_ids], t.sample_tokens, seed=cfg.seed)[0]
  return t.sample_prompt + tokenizer.decode(ids)
