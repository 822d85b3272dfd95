"""Decode benchmark: generated tokens/s with the KV cache against full forward passes, batch 1 and 8.

Random weights in float32 (the config's dtype and remat are overridden: bf16 matmuls are emulated on
CPU), greedy, no end-of-text (every row produces every token), prompts of --prompt_len tokens. For each
mode and batch: the first call (compilation included) is untimed, then the median of --repeats timed
calls of the whole generation (prefill included) gives tokens/s = batch × new tokens / time and the time
per generated token (per step of the batch).

- cache: generate.Generator (jitted prefill + lax.while_loop decode), --new_tokens per row.
- no cache: full_forward.generate_without_cache, the training forward pass over a fixed buffer of the
  bucketed length for every token (all positions' logits), --no_cache_tokens per row.

  python benchmarks/decode.py --config=experiments/tiny.py
  python benchmarks/decode.py --config=experiments/pile.py:150m --no_cache_tokens=16 --json=/tmp/d.json
"""
import json
import statistics
import time

from absl import flags
from ml_collections import config_flags

import full_forward
import harness

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from tokenformer_jax import config as config_lib  # noqa: E402
from tokenformer_jax.inference import generate  # noqa: E402
from tokenformer_jax.model import transformer as model_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment file (path.py[:arg]).',
                                          lock_config=True)
_BATCHES = flags.DEFINE_list('batches', ['1', '8'], 'Batch sizes.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 16, 'Prompt tokens per row.')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 64, 'New tokens per row with the cache.')
_NO_CACHE_TOKENS = flags.DEFINE_integer('no_cache_tokens', 64, 'New tokens per row without it.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement (median).')
_JSON = flags.DEFINE_string('json', '', 'Where to write the results as JSON.')


def random_params(m, vocab: int):
  """Graph and freshly initialised parameters of model config m (resolved for this machine)."""
  m = config_lib.resolve_model(m, jax.default_backend())
  graphdef = nnx.split(model_lib.abstract_model(m, vocab), nnx.Param)[0]
  init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(model_lib.build(m, vocab, seed=0), nnx.Param)))
  return graphdef, init()


def timed(fn, repeats):
  fn()  # compilation and warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench(cfg) -> list[dict]:
  c = config_lib.apply_overrides(cfg, {'model.dtype': 'float32', 'model.remat': 'none'})
  vocab = config_lib.padded_vocab(c.model, c.data.vocab_size)
  graphdef, params = random_params(c.model, vocab)
  n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  context = c.data.seq_len
  rows = []
  for batch in [int(b) for b in _BATCHES.value]:
    rng = np.random.default_rng(batch)
    prompts = rng.integers(0, vocab, (batch, _PROMPT_LEN.value)).tolist()
    generator = generate.Generator(graphdef, context=context, vocab_limit=vocab, eos_id=None,
                                   sampling=generate.GREEDY)
    runs = {
        'cache': (_NEW_TOKENS.value, lambda: generator.generate(params, prompts, _NEW_TOKENS.value, seed=0)),
        'no cache': (_NO_CACHE_TOKENS.value, lambda: full_forward.generate_without_cache(
            graphdef, params, prompts, _NO_CACHE_TOKENS.value, context=context, vocab_limit=vocab,
            eos_id=None, sampling=generate.GREEDY, seed=0)),
    }
    for mode, (new, fn) in runs.items():
      seconds = timed(fn, _REPEATS.value)
      row = dict(params=n_params, mode=mode, batch=batch, prompt=_PROMPT_LEN.value, new_tokens=new,
                 seconds=seconds, tokens_per_s=batch * new / seconds, ms_per_step=1000 * seconds / new)
      print(f'{mode:8s} batch {batch}: {row["tokens_per_s"]:9.1f} tokens/s, '
            f'{row["ms_per_step"]:8.2f} ms per step ({new} new tokens, {seconds:.2f} s)', flush=True)
      rows.append(row)
  return rows


def main(argv):
  if len(argv) > 1:
    raise harness.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  cfg = config_lib.from_flag(_CONFIG)
  machine = harness.machine()
  print(f"jax {machine['jax']}, {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}", flush=True)
  rows = bench(cfg)
  print('\n| params | batch | cache | new tokens | tokens/s | ms per step | cache speed-up |')
  print('|---|---|---|---|---|---|---|')
  for row in rows:
    plain = [r for r in rows if r['batch'] == row['batch'] and r['mode'] == 'no cache']
    speedup = ''
    if row['mode'] == 'cache' and plain:
      speedup = f'{row["tokens_per_s"] / plain[0]["tokens_per_s"]:.1f}×'
    print(f'| {row["params"] / 1e6:.1f}M | {row["batch"]} | {"yes" if row["mode"] == "cache" else "no"} | '
          f'{row["new_tokens"]} | {row["tokens_per_s"]:,.1f} | {row["ms_per_step"]:.1f} | {speedup} |')
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump({'machine': machine, 'config': cfg.to_dict(), 'results': rows}, f, indent=2)


if __name__ == '__main__':
  harness.run(main)
