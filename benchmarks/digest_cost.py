"""What the array digests (tokenformer_jax/checkpoints/digests.py) add to a checkpoint save and restore.

For the tiny experiment's model and a ~100M-parameter TokenFormer (benchmarks/checkpoint_stall.py's; its
size set by --num_layers and --d_model), side by side in one process, rounds alternating the order:
- save: store.save (sync: the whole save; async: the call the training loop waits for), which
  computes the digests, against the same Orbax save without the digests item (as saves were before);
- restore: store.restore of the first (it checks every array) against that of the second (a
  checkpoint without digests restores unchecked).
Also the digests alone: their first computation (tracing and compiling them) and later ones. Medians.

  python benchmarks/digest_cost.py [--rounds=3] [--workdir=/tmp/digest_cost] [--json=FILE]
"""
import argparse
import json
import shutil
import statistics
import time

import checkpoint_stall
import harness

TINY = dict(num_layers=4, d_model=128)   # experiments/tiny.py's size (token counts scale with d_model)


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _save_without_digests(mngr, step, state, meta):
  """store.save as it was before digests: the state, data and meta items only."""
  import orbax.checkpoint as ocp
  from tokenformer_jax.data import pipeline
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta),
                                          data=ocp.args.JsonSave(pipeline.Position().state())))


def measure(name: str, size: dict, workdir: str, rounds: int) -> dict:
  import jax
  from tokenformer_jax.checkpoints import digests
  from tokenformer_jax.checkpoints import run_record
  from tokenformer_jax.checkpoints import store
  from tokenformer_jax.data import pipeline
  from tokenformer_jax.training import state as state_lib
  c, spec, state, _ = checkpoint_stall.build(2, 128, **size)
  jax.block_until_ready(state)   # initialised: the first digest times compiling and running only
  arrays = dict(enumerate(jax.tree.leaves(state)))
  out = {'model': name, 'params_M': round(state_lib.num_params(spec) / 1e6, 1),
         'state_MiB': round(sum(x.nbytes for x in arrays.values()) / 2**20),
         'digest_first_s': _timed(lambda: digests.compute(arrays))}
  out['digest_s'] = statistics.median(_timed(lambda: digests.compute(arrays)) for _ in range(rounds))
  meta, targets = run_record.run_meta(c, checkpoint_stall.VOCAB), state_lib.abstract_targets(spec)
  times = {key: [] for key in ('save', 'save_plain', 'async_call', 'async_call_plain', 'restore',
                               'restore_plain')}
  step = 0
  for r in range(rounds):
    for plain in ((False, True) if r % 2 == 0 else (True, False)):
      suffix = '_plain' if plain else ''
      for mode in ('sync', 'async'):
        shutil.rmtree(workdir, ignore_errors=True)
        mngr = store.manager(workdir, keep=1, compress=False, async_save=mode == 'async')
        step += 1
        if plain:
          call = lambda: _save_without_digests(mngr, step, state, meta)
        else:
          call = lambda: store.save(mngr, step, state, pipeline.Position(), meta, wait=False)
        if mode == 'sync':
          times['save' + suffix].append(_timed(call))
          times['restore' + suffix].append(_timed(lambda: store.restore(mngr, step, targets)))
        else:
          times['async_call' + suffix].append(_timed(call))
          mngr.wait_until_finished()
  out.update({f'{key}_s': statistics.median(values) for key, values in times.items()})
  for key in ('save', 'async_call', 'restore'):
    out[f'{key}_added_s'] = out[f'{key}_s'] - out[f'{key}_plain_s']
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}), flush=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--workdir', default='/tmp/digest_cost')
  parser.add_argument('--num_layers', type=int, default=checkpoint_stall.MODEL['num_layers'])
  parser.add_argument('--d_model', type=int, default=checkpoint_stall.MODEL['d_model'])
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  from tokenformer_jax.runtime import platforms
  platforms.choose()
  results = [measure('tiny', TINY, args.workdir, args.rounds),
             measure('large', {'num_layers': args.num_layers, 'd_model': args.d_model}, args.workdir,
                     args.rounds)]
  shutil.rmtree(args.workdir, ignore_errors=True)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump({'machine': harness.machine(), 'results': results}, f, indent=1)


if __name__ == '__main__':
  main()
