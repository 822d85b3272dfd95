"""The periodic actions of a training run, as hooks (hooks.py): the log window and its metrics, the
evaluation, the checkpoint save, the profiler window, the preemption check, the divergence guard and the
end sample. loop._add_hooks registers them in the order they run within a step.
"""
import math
import time

import jax
import jax.numpy as jnp
from absl import logging

from tokenformer_jax.checkpoints import store
from tokenformer_jax.errors import UserError
from tokenformer_jax.inference import generate
from tokenformer_jax.runtime import sharding
from tokenformer_jax.telemetry import goodput
from tokenformer_jax.training import step as step_lib


class Diverged(UserError):
  """A non-finite loss or gradient norm: the run trained and then failed (not a refusal of its input)."""


class Divergence:
  """The first step whose loss or gradient norm is not finite, tracked on the device (no sync per step)
  and read before every save and log: a diverged state is never saved, so rotation keeps a good one."""

  def __init__(self, mesh, mngr):
    self._mngr = mngr
    self._first_bad = jax.jit(lambda: jnp.int32(-1), out_shardings=sharding.replicated(mesh))()
    self._track = jax.jit(lambda first, m, step: jnp.where(
        (first < 0) & ~(jnp.isfinite(m['loss']) & jnp.isfinite(m['grad_norm'])), step, first))

  def track(self, info) -> None:
    self._first_bad = self._track(self._first_bad, info.metrics, info.step)

  def check(self, info) -> None:
    del info
    first_bad = int(self._first_bad)
    if first_bad >= 0:
      self._mngr.wait_until_finished()  # the last save (of a finite state) commits before it is named
      kept = self._mngr.latest_step()
      where = f'the last checkpoint, step {kept}, is kept' if kept is not None else 'nothing was saved'
      raise Diverged(f'the loss or gradient norm is not finite at step {first_bad}; stopped before saving '
                     f'({where}): lower optimizer.lr or raise optimizer.warmup_frac and rerun')


class LogWindow:
  """The steps since the last log: their metrics, time breakdown, throughput and MFU, written when the
  window closes (every train.log_every steps and at the end), and the progress bar."""

  def __init__(self, clock, account, writer, bar, result, step_tokens: int, step_flops: float, peak):
    self._clock, self._account, self._writer, self._bar = clock, account, writer, bar
    self._result = result
    self._step_tokens, self._step_flops, self._peak = step_tokens, step_flops, peak
    self.steps = 0

  def count(self, info) -> None:
    del info
    self.steps += 1

  def write(self, info) -> None:
    scalars = {k: float(v) for k, v in info.metrics.items()}   # waits for the window's steps
    scalars.update(self._close(info.step))
    self._result.train_losses[info.step] = scalars['loss']
    self._writer.write(info.step, scalars)
    shown = {'loss': f"{scalars['loss']:.3f}", 'tok_s': f"{scalars['tokens_per_s']:.0f}"}
    if 'mfu' in scalars:
      shown['mfu'] = f"{scalars['mfu']:.1%}"
    self._bar.set_postfix(shown)

  def progress(self, info) -> None:
    del info
    self._bar.update(1)

  def finish(self, done: int, trained: bool) -> None:
    """The end's evaluation and save (and a preempted run's last steps) close one more window; a run
    that `trained` records its goodput."""
    final = self._close(done)
    if trained:
      self._writer.write(done, {k: v for k, v in final.items()
                                if k.startswith(('goodput', 'badput', 'time_'))})
      if jax.process_index() == 0:
        self._bar.write(goodput.describe(self._account.summary()))

  def _close(self, done: int) -> dict:
    """The window's time breakdown, its throughput over the time spent training (train steps and waiting
    for data: evaluation, saves and start-up have columns of their own), MFU where a peak is known, and
    the run's goodput so far."""
    steps, self.steps = self.steps, 0
    times = self._clock.close_window()
    self._account.add_window(done, steps, times)
    out = dict(times)
    training_s = times['time_step_s'] + times['time_data_s']
    if steps and training_s > 0:
      flop = self._step_flops * steps
      out['tokens_per_s'] = self._step_tokens * steps / training_s
      out['gflops_per_s'] = flop / training_s / 1e9
      if self._peak:
        out['mfu'] = flop / training_s / self._peak
    summary = self._account.summary()
    out.update({k: v for k, v in summary.items() if k.startswith(('goodput', 'badput'))})
    return out


class Evaluation:
  """The validation loss (step.mean_loss), logged and kept in the run's result."""

  def __init__(self, spec, cfg, val_batches, clock, writer, bar, result):
    self._spec, self._cfg, self._batches = spec, cfg, val_batches
    self._eval_step = step_lib.make_eval_step(spec, cfg)
    self._clock, self._writer, self._bar, self._result = clock, writer, bar, result

  def __call__(self, info) -> None:
    jax.block_until_ready(info.state)   # the steps' time stays theirs, not the eval's
    with self._clock.measure('eval'):
      val = step_lib.mean_loss(self._eval_step, self._spec, self._cfg, info.state['params'], self._batches)
    self._result.val_losses[info.step] = val
    self._writer.write(info.step, {'val_loss': val, 'val_ppl': math.exp(min(val, 50.0))})
    if jax.process_index() == 0:
      self._bar.write(f'step {info.step}: val loss {val:.4f}, ppl {math.exp(min(val, 50.0)):.2f}')


class Checkpoints:
  """Saves the state and the data position; async saves return once the arrays are on the host and are
  waited for at the end, at a stop, or before the next save."""

  def __init__(self, mngr, train_iter, meta, clock, async_save: bool):
    self._mngr, self._train_iter, self._meta, self._clock = mngr, train_iter, meta, clock
    self._async = async_save

  def save(self, info) -> None:
    jax.block_until_ready(info.state)   # the steps' time stays theirs, not the save's
    with self._clock.measure('checkpoint'):
      store.save(self._mngr, info.step, info.state, self._train_iter, self._meta,
                 wait=info.stopping or info.step == info.end or not self._async)

  def wait(self) -> None:
    with self._clock.measure('checkpoint'):
      self._mngr.wait_until_finished()


class ProfileWindow:
  """Starts a trace before the first step of each configured window and stops it after the last."""

  def __init__(self, profiler, clock):
    self._profiler, self._clock = profiler, clock

  def starts_at(self, step: int) -> bool:
    return self._profiler.starts_at(step)

  def start(self, step: int) -> None:
    with self._clock.measure('profile'):
      self._profiler.start(step)

  def ends_after(self, info) -> bool:
    return self._profiler.ends_at(info.step - 1)

  def stop(self, info) -> None:
    jax.block_until_ready(info.state)   # the window's device work, inside the trace
    with self._clock.measure('profile'):
      self._profiler.stop()


class Stop:
  """SIGTERM or Ctrl-C (preemption.Preemption): asked after every step; once it says stop, the step is
  saved (Checkpoints.save is due on a stop) and the run ends with the preemption's exit status."""

  def __init__(self, preemption, result):
    self._preemption, self._result = preemption, result

  def check(self, info) -> None:
    info.stopping = self._preemption.reached(info.step)

  def announce(self, info) -> None:
    p = self._preemption
    logging.warning('%s: saved step %d, exiting (status %d: rerun to resume)', p.signal_name, info.step,
                    p.exit_status)
    self._result.preempted, self._result.exit_status = True, p.exit_status


def sample_text(spec, cfg, params, tokenizer) -> str:
  """train.sample_tokens tokens continuing train.sample_prompt (KV-cached, with the config's sampling
  settings: see generate.py); an empty prompt starts a new document."""
  t = cfg.train
  generator = generate.Generator(spec.graphdef, context=cfg.data.seq_len, vocab_limit=tokenizer.vocab_size,
                                 eos_id=tokenizer.eos_id, sampling=generate.Sampling.of(cfg.sampling))
  prompt_ids = tokenizer.encode(t.sample_prompt) or [tokenizer.eos_id]
  ids = generator.generate(params, [prompt_ids], t.sample_tokens, seed=cfg.seed)[0]
  return t.sample_prompt + tokenizer.decode(ids)


class Sample:
  """A taste of the model once training reached train.steps (not after a stop)."""

  def __init__(self, spec, cfg, tokenizer, result):
    self._spec, self._cfg, self._tokenizer, self._result = spec, cfg, tokenizer, result

  def __call__(self, info) -> None:
    t, result = self._cfg.train, self._result
    if not t.sample_tokens or result.step != t.steps or result.preempted:
      return
    result.sample = sample_text(self._spec, self._cfg, info.state['params'], self._tokenizer)
    if jax.process_index() == 0:
      print('--- sample ---\n' + result.sample + '\n--------------', flush=True)


def timed_first_call(train_step, clock, started: float):
  """train_step, with its first call (tracing and compiling) counted as start-up and logged."""
  first = [True]

  def call(state, batch):
    if not first[0]:
      return train_step(state, batch)
    first[0] = False
    compile_start = time.perf_counter()
    out = train_step(state, batch)
    clock.add('startup', time.perf_counter() - compile_start)
    if jax.process_index() == 0:
      logging.info('start-up: %.1f s to the first step (config, data, state), %.1f s compiling it',
                   compile_start - started, time.perf_counter() - compile_start)
    return out
  return call
