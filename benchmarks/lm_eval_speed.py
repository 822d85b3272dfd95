"""lm-evaluation-harness scoring speed: loglikelihood requests per second of lm_eval_adapter.TokenFormerLM,
batch 1 against batch 16, on freshly initialised parameters (the speed does not depend on their values).

Requests are shaped like a zero-shot multiple-choice task's: a context of 20–120 tokens and a
continuation of 1–6 (the harness sends one request per choice). Every length bucket is compiled before
timing; batch sizes alternate round by round and the medians are reported.

  python benchmarks/lm_eval_speed.py --config=experiments/tiny.py [--requests=64] [--rounds=3] [--json=FILE]
  python benchmarks/lm_eval_speed.py --config=experiments/pile.py:150m --config.model.vocab_size=50304
"""
import json
import statistics
import time
import types

from absl import flags
from ml_collections import config_flags

import harness as bench_harness

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_REQUESTS = flags.DEFINE_integer('requests', 64, 'Loglikelihood requests per timed pass.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed passes per batch size.')
_BATCHES = flags.DEFINE_list('batch_sizes', ['1', '16'], 'Batch sizes compared.')
_JSON = flags.DEFINE_string('json', '', 'Where to write the results as JSON.')


def main(argv):
  del argv
  import jax
  import numpy as np
  from tokenformer_jax import config as config_lib
  from tokenformer_jax.inference import lm_eval_adapter
  from tokenformer_jax.runtime import sharding
  from tokenformer_jax.training import state as state_lib
  cfg = config_lib.from_flag(_CONFIG)
  vocab = config_lib.padded_vocab(cfg.model, cfg.model.vocab_size or cfg.data.vocab_size)
  spec = state_lib.make_spec(cfg, vocab, sharding.make_mesh(cfg.mesh))
  params = state_lib.init_state(spec, cfg)['params']
  tokenizer = types.SimpleNamespace(eos_id=0, vocab_size=vocab)   # scoring reads ids only
  rng = np.random.default_rng(0)
  pairs = [(list(rng.integers(1, vocab, int(rng.integers(20, 121)))),
            list(rng.integers(1, vocab, int(rng.integers(1, 7))))) for _ in range(_REQUESTS.value)]
  models = {int(b): lm_eval_adapter.TokenFormerLM(spec.graphdef, params, spec.mesh, tokenizer,
                                          context=cfg.data.seq_len, batch_size=int(b),
                                          seed=cfg.sampling.seed)
            for b in _BATCHES.value}
  for model in models.values():
    model.score_pairs(pairs)   # compiles every bucket these requests use
  times = {b: [] for b in models}
  for r in range(_ROUNDS.value):
    for b in (list(models) if r % 2 == 0 else list(models)[::-1]):
      start = time.perf_counter()
      model_results = models[b].score_pairs(pairs)
      times[b].append(time.perf_counter() - start)
    del model_results
  result = {
      'config': _CONFIG.value.get('model').to_dict(), 'params_M': state_lib.num_params(spec) / 1e6,
      'machine': bench_harness.machine(), 'requests': len(pairs),
      'requests_per_s': {str(b): len(pairs) / statistics.median(t) for b, t in times.items()},
      'compiles': {str(b): m.traces['score'] for b, m in models.items()},
  }
  first, last = sorted(models)[0], sorted(models)[-1]
  result[f'batch_{last}_over_batch_{first}'] = (result['requests_per_s'][str(last)]
                                                / result['requests_per_s'][str(first)])
  print(json.dumps({k: v for k, v in result.items() if k not in ('config', 'machine')}, indent=1))
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(result, f, indent=1)
  del jax


if __name__ == '__main__':
  bench_harness.run(main)
