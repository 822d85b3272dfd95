"""Our restored model as an lm-evaluation-harness model: loglikelihood, loglikelihood_rolling and
generate_until (see lm_eval.py for the command line).

Scoring runs in fixed shapes, so nothing compiles per request: requests are sorted by length and cut
into batches of `batch_size` rows (the last one padded with empty rows), each padded to a length bucket
(a power of two from 32 up to the model's context, data.seq_len). A context longer than the window is
cut from the left, as the harness expects. The checkpoint's tokenizer (sentencepiece or tokenizer.json)
encodes; its end-of-text id is the prefix of an empty context and of every rolling window, as in
`--mode=eval` (so `loglikelihood_rolling` of a text is minus the nats `--mode=eval` reports for it).
Generation is greedy or sampled by the request's own settings, through the KV-cached generate.Generator,
batched by settings.

With several processes, every process computes every request (the arrays are global; the harness sees
one rank), so all of them return the same results.
"""
import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from lm_eval.api.model import TemplateLM
from lm_eval import utils as lm_eval_utils

from tokenformer_jax.inference import generate
from tokenformer_jax.runtime import sharding

MIN_BUCKET = 32


def buckets(context: int) -> list[int]:
  """Padded lengths of the model input: powers of two from MIN_BUCKET, and the context itself."""
  out, n = [], MIN_BUCKET
  while n < context:
    out.append(n)
    n *= 2
  return out + [context]


class TokenFormerLM(TemplateLM):
  """A restored checkpoint (graphdef + params on a mesh) behind the harness's model interface."""

  def __init__(self, graphdef, params, mesh, tokenizer, context: int, batch_size: int, seed: int):
    super().__init__()
    self.graphdef, self.params, self.mesh, self.tok = graphdef, params, mesh, tokenizer
    self.context, self.batch_size, self.seed = context, batch_size, seed
    self.buckets = buckets(context)
    self.traces = collections.Counter()
    self._score = jax.jit(self._score_impl, out_shardings=sharding.replicated(mesh))
    self._generators = {}

  # ---- the harness's interface ----
  @property
  def eot_token_id(self) -> int:
    return self.tok.eos_id

  @property
  def max_length(self) -> int:
    return self.context

  def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
    del add_special_tokens, kwargs
    return self.tok.encode(string)

  def tok_decode(self, tokens, **kwargs) -> str:
    del kwargs
    return self.tok.decode(list(tokens))

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    del disable_tqdm, kwargs
    return self.score_pairs([(context, continuation) for _, context, continuation in requests])

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    del disable_tqdm
    pairs, owners = [], []
    for index, request in enumerate(requests):
      tokens = self.tok_encode(request.args[0])
      for window in lm_eval_utils.get_rolling_token_windows(tokens, self.eot_token_id, self.context, 1):
        pairs.append(lm_eval_utils.make_disjoint_window(window))
        owners.append(index)
    totals = [0.0] * len(requests)
    for owner, (logprob, _) in zip(owners, self.score_pairs(pairs)):
      totals[owner] += logprob
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    del disable_tqdm
    out = [''] * len(requests)
    groups = collections.defaultdict(list)
    for index, request in enumerate(requests):
      context, kwargs = request.args
      settings = _settings(kwargs)
      groups[tuple(sorted(settings.items()))].append((index, context, settings))
    for members in groups.values():
      settings = members[0][2]
      generator = self._generator(settings['temperature'])
      budget = min(settings['max_gen_toks'], self.context - 1)
      for start in range(0, len(members), self.batch_size):
        chunk = members[start:start + self.batch_size]
        prompts = [(self.tok_encode(context) or [self.eot_token_id])[-(self.context - budget):]
                   for _, context, _ in chunk]
        prompts += [[self.eot_token_id]] * (self.batch_size - len(prompts))   # fixed batch shape
        new_ids = generator.generate(self.params, prompts, budget, seed=self.seed)
        for (index, _, _), ids in zip(chunk, new_ids):
          out[index] = _cut(self.tok_decode(ids), settings['until'])
    return out

  def _generator(self, temperature: float) -> generate.Generator:
    """One per sampling setting, kept: its compiled prefill and decode serve every later call."""
    if temperature not in self._generators:
      self._generators[temperature] = generate.Generator(
          self.graphdef, context=self.context, vocab_limit=self.tok.vocab_size, eos_id=self.eot_token_id,
          sampling=generate.Sampling(temperature=temperature, top_k=0, top_p=1.0))
    return self._generators[temperature]

  # ---- scoring ----
  def _score_impl(self, params, inputs_BxT, targets_BxT):
    self.traces['score'] += 1
    logits_BxTxV = nnx.merge(self.graphdef, params)(inputs_BxT).astype(jnp.float32)
    logprobs_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
    picked_BxT = jnp.take_along_axis(logprobs_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return picked_BxT, jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT

  def score_pairs(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether greedy decoding gives the continuation), per
    (context ids, continuation ids) pair; the window keeps the last `context` + 1 ids."""
    rows = []
    for context, continuation in pairs:
      whole = (list(context) + list(continuation))[-(self.context + 1):]
      rows.append((whole[:-1], whole[1:], min(len(continuation), len(whole) - 1)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    results = [None] * len(rows)
    replicated = sharding.replicated(self.mesh)
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      length = next(b for b in self.buckets if b >= len(rows[chunk[0]][0]))
      inputs = np.zeros((self.batch_size, length), np.int32)
      targets = np.zeros((self.batch_size, length), np.int32)
      for r, i in enumerate(chunk):
        ids_in, ids_out, _ = rows[i]
        inputs[r, :len(ids_in)], targets[r, :len(ids_out)] = ids_in, ids_out
      picked, greedy = self._score(self.params, jax.device_put(inputs, replicated),
                                   jax.device_put(targets, replicated))
      picked, greedy = np.asarray(picked, np.float64), np.asarray(greedy)
      for r, i in enumerate(chunk):
        n_in, scored = len(rows[i][0]), rows[i][2]
        span = slice(n_in - scored, n_in)
        results[i] = (float(picked[r, span].sum()), bool(greedy[r, span].all()))
    return results


def _settings(kwargs: dict) -> dict:
  """The request's generation settings, normalised: stop strings (generation also ends at
  end-of-text), budget, and temperature (0: greedy, unless the request samples)."""
  until = kwargs.get('until') or []
  until = [until] if isinstance(until, str) else list(until)
  temperature = float(kwargs.get('temperature', 0.0)) if kwargs.get('do_sample', False) else 0.0
  return {'until': tuple(until), 'max_gen_toks': int(kwargs.get('max_gen_toks', 256)),
          'temperature': temperature if math.isfinite(temperature) else 0.0}


def _cut(text: str, until) -> str:
  for stop in until:
    if stop and stop in text:
      text = text[:text.index(stop)]
  return text
