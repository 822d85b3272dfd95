"""Decode benchmark: generated tokens/s with the KV cache against full forward passes, batch 1 and 8.

Random weights (float32), greedy, no end-of-text (every row produces every token), prompts of
--prompt_len tokens. For each config, mode and batch: the first call (compilation included) is untimed,
then the median of --repeats timed calls of the whole generation (prefill included) gives tokens/s =
batch × new tokens / time and the time per generated token (per step of the batch).

- cache: generate.Generator (jitted prefill + lax.while_loop decode).
- no cache: generate.generate_without_cache, the training forward pass over a fixed buffer of the
  bucketed length for every token (all positions' logits). Fewer new tokens for the 150M model.

  python benchmarks/decode.py                     # tiny and 150m
  python benchmarks/decode.py --configs=tiny --json=/tmp/decode.json
"""
import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from tests.conftest import load_experiment  # noqa: E402
from tokenformer_jax import generate  # noqa: E402
from tokenformer_jax import model as model_lib  # noqa: E402

_CONFIGS = flags.DEFINE_list('configs', ['tiny', '150m'], 'Which of: tiny, 150m.')
_BATCHES = flags.DEFINE_list('batches', ['1', '8'], 'Batch sizes.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 16, 'Prompt tokens per row.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement (median).')
_JSON = flags.DEFINE_string('json', '', 'Where to write the results as JSON.')

# config: (new tokens with the cache, new tokens without it)
NEW_TOKENS = {'tiny': (64, 64), '150m': (64, 16)}


def make_model_config(name: str):
  if name == 'tiny':
    c = load_experiment('tiny').get_config()
    vocab = c.data.vocab_size
  else:
    c = load_experiment('pile').get_config(name)
    vocab = c.model.vocab_size
  c.model.dtype = 'float32'   # CPU: bf16 matmuls are emulated
  c.model.remat = 'none'
  return c, -(-vocab // 128) * 128


def random_params(m, vocab):
  abstract = model_lib.abstract_model(m, vocab)
  graphdef = nnx.split(abstract, nnx.Param)[0]
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


def bench(name: str) -> list[dict]:
  c, vocab = make_model_config(name)
  graphdef, params = random_params(c.model, vocab)
  n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  context = c.data.seq_len
  rows = []
  for batch in [int(b) for b in _BATCHES.value]:
    rng = np.random.default_rng(batch)
    prompts = rng.integers(0, vocab, (batch, _PROMPT_LEN.value)).tolist()
    cached_new, plain_new = NEW_TOKENS[name]
    generator = generate.Generator(graphdef, context=context, vocab_limit=vocab, eos_id=None)
    runs = {
        'cache': (cached_new, lambda: generator.generate(params, prompts, cached_new)),
        'no cache': (plain_new, lambda: generate.generate_without_cache(
            graphdef, params, prompts, plain_new, context=context, vocab_limit=vocab, eos_id=None)),
    }
    for mode, (new, fn) in runs.items():
      seconds = timed(fn, _REPEATS.value if name == 'tiny' or mode == 'cache' else 1)
      row = dict(config=name, params=n_params, mode=mode, batch=batch, prompt=_PROMPT_LEN.value,
                 new_tokens=new, seconds=seconds, tokens_per_s=batch * new / seconds,
                 ms_per_step=1000 * seconds / new)
      print(f'{name:5s} {mode:8s} batch {batch}: {row["tokens_per_s"]:9.1f} tokens/s, '
            f'{row["ms_per_step"]:8.2f} ms per step ({new} new tokens, {seconds:.2f} s)', flush=True)
      rows.append(row)
  return rows


def main(argv):
  del argv
  print(f'jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPUs, '
        f'Python {platform.python_version()}', flush=True)
  rows = [row for name in _CONFIGS.value for row in bench(name)]
  print('\n| config | params | batch | cache | new tokens | tokens/s | ms per step | cache speed-up |')
  print('|---|---|---|---|---|---|---|---|')
  for row in rows:
    plain = [r for r in rows if r['config'] == row['config'] and r['batch'] == row['batch']
             and r['mode'] == 'no cache']
    speedup = ''
    if row['mode'] == 'cache' and plain:
      speedup = f'{row["tokens_per_s"] / plain[0]["tokens_per_s"]:.1f}×'
    print(f'| {row["config"]} | {row["params"] / 1e6:.1f}M | {row["batch"]} | '
          f'{"yes" if row["mode"] == "cache" else "no"} | {row["new_tokens"]} | {row["tokens_per_s"]:,.1f} | '
          f'{row["ms_per_step"]:.1f} | {speedup} |')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  app.run(main)
