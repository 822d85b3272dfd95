"""How long a checkpoint save stalls training: async (the training default) against sync, side by side.

On a ~103M-parameter TokenFormer (state with Adam moments: ~1.2 GB), each round trains a few steps,
saves, and goes on training:
- sync: the stall is the whole save (write + commit); its process CPU time and the checkpoint's size on
  disk are reported too (compare --compression);
- async: the stall is the save call (arrays copied to host) plus the extra time the steps take while
  the background write runs (on a CPU host the write shares the cores with the step; on an
  accelerator it would not), measured as the steps' time during the write minus as many undisturbed
  steps timed just before.
Rounds alternate the order of the two modes; medians are reported.

  python benchmarks/checkpoint_stall.py [--rounds=5] [--workdir=/tmp/stall] [--json=FILE]
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import time

MODEL = dict(num_layers=8, d_model=768, num_heads=12, n_qkv=1024, n_proj=1024, n_ffn=4096)
VOCAB = 512


def build(batch_size: int, seq_len: int, num_layers: int = MODEL['num_layers'],
          d_model: int = MODEL['d_model']):
  from tokenformer_jax import config as config_lib
  from tokenformer_jax.runtime import sharding
  from tokenformer_jax.training import state as state_lib
  from tokenformer_jax.training import step as step_lib
  c = config_lib.base_config()
  scale = d_model / MODEL['d_model']
  c.model.update({**MODEL, 'num_layers': num_layers, 'd_model': d_model, 'num_heads': max(1, d_model // 64),
                  **{k: int(MODEL[k] * scale) for k in ('n_qkv', 'n_proj', 'n_ffn')}})
  c.data.seq_len, c.train.batch_size = seq_len, batch_size
  c.lock()
  spec = state_lib.make_spec(c, VOCAB, sharding.make_mesh(c.mesh))
  return c, spec, state_lib.init_state(spec, c), step_lib.make_train_step(spec, c)


def _cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--seq_len', type=int, default=128)
  parser.add_argument('--workdir', default='/tmp/checkpoint_stall')
  parser.add_argument('--num_layers', type=int, default=MODEL['num_layers'])
  parser.add_argument('--d_model', type=int, default=MODEL['d_model'], help='token counts scale with it')
  parser.add_argument('--compression', action='store_true', help='zstd on the arrays (Orbax default)')
  parser.add_argument('--json', default='')
  args = parser.parse_args()

  from tokenformer_jax.runtime import platforms
  platforms.choose()
  import jax
  import numpy as np
  from tokenformer_jax.checkpoints import run_record
  from tokenformer_jax.checkpoints import store
  from tokenformer_jax.data import pipeline
  from tokenformer_jax.training import state as state_lib
  from tokenformer_jax.training import step as step_lib

  shutil.rmtree(args.workdir, ignore_errors=True)
  c, spec, state, train_step = build(args.batch_size, args.seq_len, args.num_layers, args.d_model)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, VOCAB, (args.batch_size, args.seq_len + 1), dtype=np.int32)
  batch = step_lib.global_batch(spec, c, tokens)
  meta = run_record.run_meta(c, VOCAB)
  managers = {mode: store.manager(os.path.join(args.workdir, mode), keep=1, async_save=mode == 'async',
                                       compress=args.compression) for mode in ('sync', 'async')}

  def step(state):
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics['loss'])
    return state

  def timed_steps(state, n):
    t0 = time.perf_counter()
    for _ in range(n):
      state = step(state)
    return state, time.perf_counter() - t0

  state = step(state)  # compile
  state, _ = timed_steps(state, 2)
  rounds, save_step = [], 0
  for r in range(args.rounds):
    row = {}
    for mode in (('sync', 'async') if r % 2 == 0 else ('async', 'sync')):
      mngr = managers[mode]
      state, undisturbed = timed_steps(state, 2)
      step_s = undisturbed / 2
      save_step += 1
      cpu0, t0 = _cpu_s(), time.perf_counter()
      store.save(mngr, save_step, state, pipeline.Position(), meta, wait=mode == 'sync')
      call_s = time.perf_counter() - t0
      if mode == 'sync':
        row['sync'] = {'stall_s': call_s, 'step_s': step_s, 'cpu_s': _cpu_s() - cpu0,
                       'MiB': _size(os.path.join(args.workdir, 'sync', 'checkpoints', str(save_step))) / 2**20}
        continue
      steps, t1 = 0, time.perf_counter()
      while mngr.is_saving_in_progress():
        state = step(state)
        steps += 1
      mngr.wait_until_finished()
      during_s = time.perf_counter() - t1
      contention_s = max(0.0, during_s - steps * step_s) if steps else 0.0
      row['async'] = {'call_s': call_s, 'contention_s': contention_s, 'stall_s': call_s + contention_s,
                      'background_s': during_s, 'steps_during_write': steps, 'step_s': step_s}
    rounds.append(row)
    print(json.dumps({'round': r, **row}), flush=True)

  def median(mode, key):
    return statistics.median(row[mode][key] for row in rounds)

  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  result = {
      'params_M': state_lib.num_params(spec) / 1e6, 'state_GiB': state_bytes / 2**30,
      'devices': jax.device_count(), 'cpu_count': os.cpu_count(), 'rounds': args.rounds,
      'compression': args.compression,
      'sync_stall_s': median('sync', 'stall_s'),
      'async_call_s': median('async', 'call_s'),
      'async_contention_s': median('async', 'contention_s'),
      'async_stall_s': median('async', 'stall_s'),
      'async_background_s': median('async', 'background_s'),
      'step_s': median('sync', 'step_s'),
      'sync_cpu_s': median('sync', 'cpu_s'), 'checkpoint_MiB': median('sync', 'MiB'),
      'per_round': rounds,
  }
  result['async_stall_over_sync'] = result['async_stall_s'] / result['sync_stall_s']
  result['async_call_over_sync'] = result['async_call_s'] / result['sync_stall_s']
  print(json.dumps({k: v for k, v in result.items() if k != 'per_round'}, indent=1))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)
  shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == '__main__':
  main()
