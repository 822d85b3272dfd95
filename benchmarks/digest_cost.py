"""What the array digests (tokenformer_jax/digests.py) add to a checkpoint save and restore.

For the tiny experiment's model and a ~100M-parameter TokenFormer (benchmarks/checkpoint_stall.py's),
times a synchronous save and a restore of the whole train state (both with digests: the save computes
them, the restore checks them) and, on their own, the digest computation: its first call (tracing and
compiling the reduction) and the median of later ones. Medians over --rounds.

  python benchmarks/digest_cost.py [--rounds=3] [--workdir=/tmp/digest_cost] [--json=FILE]
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import checkpoint_stall  # noqa: E402

TINY = dict(num_layers=4, d_model=128)   # experiments/tiny.py's size (token counts scale with d_model)


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def measure(name: str, size: dict, workdir: str, rounds: int) -> dict:
  import jax
  from tokenformer_jax import checkpoint, digests, state as state_lib
  from tokenformer_jax.data import pipeline
  c, spec, state, _ = checkpoint_stall.build(2, 128, **size)
  jax.block_until_ready(state)   # initialised: the first digest times compiling and running only
  arrays = dict(enumerate(jax.tree.leaves(state)))
  first_s, _ = _timed(lambda: digests.record(arrays))
  compute_s = statistics.median(_timed(lambda: digests.record(arrays))[0] for _ in range(rounds))
  meta = checkpoint.run_meta(c, checkpoint_stall.VOCAB)
  saves, restores = [], []
  for r in range(rounds):
    shutil.rmtree(workdir, ignore_errors=True)
    mngr = checkpoint.manager(workdir, keep=1, compress=False)
    saves.append(_timed(lambda: checkpoint.save(mngr, r, state, pipeline.Position(), meta))[0])
    targets = state_lib.abstract_targets(spec)
    restores.append(_timed(lambda: checkpoint.restore(mngr, r, targets))[0])
  n_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  out = {'model': name, 'params_m': round(state_lib.num_params(spec) / 1e6, 1),
         'state_mib': round(n_bytes / 2**20), 'digest_first_call_s': round(first_s, 3),
         'digest_s': round(compute_s, 3), 'save_s': round(statistics.median(saves), 3),
         'restore_s': round(statistics.median(restores), 3)}
  print(json.dumps(out), flush=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--workdir', default='/tmp/digest_cost')
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  from tokenformer_jax import platforms
  platforms.choose()
  results = [measure('tiny', TINY, args.workdir, args.rounds),
             measure('100M', {}, args.workdir, args.rounds)]
  shutil.rmtree(args.workdir, ignore_errors=True)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
