"""Text generation with a KV cache: one jitted prefill, then one jitted decode loop (lax.while_loop).

Prompts of different lengths share a batch. They are right-padded, and slot s of a row's cache holds that
row's token at position s (model.KVCache), so rotary positions are each row's true positions; the decode
loop then feeds one token per row per step. Prompt length, cache length and output length are rounded up
to multiples of BUCKET, so one compilation of the prefill and one of the decode loop serve a whole range
of prompt and generation lengths; nothing is compiled per token (`Generator.traces` counts the traces).

Sampling: greedy (temperature 0), or softmax(logits / temperature) restricted to the top_k ids and/or the
top_p nucleus (the smallest set of most likely ids holding at least top_p of the mass). Ids at or past the
tokenizer's vocabulary (the embedding's padding rows) are never produced. A row stops at end-of-text
(not returned) or after max_new_tokens. The context is the trained sequence length C: a prompt longer
than C is an error; a row whose prompt plus new tokens would not fit stops at C + 1 tokens (the last new
token is predicted from a full window), with a warning.

The cached path must match the training forward pass token for token: tests/inference/generate_test.py checks it
against a full-forward generator (benchmarks/decode.py's baseline, which shares this module's sampling).
"""
import collections
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.data import dataset as dataset_lib
from tokenformer_jax.errors import UserError
from tokenformer_jax.inference import loading

BUCKET = 64          # shapes are rounded up to multiples of this (compilations are reused)
MAX_BATCH = 32       # prompts generated together by `run`


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature 0: greedy (argmax); top_k 0 and top_p 1: no filtering. No defaults here: the config's
  sampling section is the one place a run's settings come from (`of`)."""
  temperature: float
  top_k: int
  top_p: float

  def __post_init__(self):
    if self.temperature < 0:
      raise UserError(f'temperature must be >= 0 (0: greedy), got {self.temperature}')
    if self.top_k < 0:
      raise UserError(f'top_k must be >= 0 (0: off), got {self.top_k}')
    if not 0.0 < self.top_p <= 1.0:
      raise UserError(f'top_p must be in (0, 1] (1: off), got {self.top_p}')

  @classmethod
  def of(cls, sampling_cfg) -> 'Sampling':
    """The settings of a config's sampling section."""
    return cls(sampling_cfg.temperature, sampling_cfg.top_k, sampling_cfg.top_p)


GREEDY = Sampling(temperature=0.0, top_k=0, top_p=1.0)   # the argmax; what the reference checks use


def sample_logits(logits_BxV: jax.Array, key: jax.Array, sampling: Sampling, vocab_limit: int):
  """One id per row (int32) from float32 logits, never one >= vocab_limit."""
  V = logits_BxV.shape[-1]
  logits_BxV = jnp.where(jnp.arange(V) < vocab_limit, logits_BxV, -jnp.inf)
  if sampling.temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / sampling.temperature
  if sampling.top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, min(sampling.top_k, V))[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV >= kth_Bx1, logits_BxV, -jnp.inf)
  if sampling.top_p < 1.0:
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    # the most likely id is always kept (its mass_before is 0); ties at the threshold are kept too
    threshold_Bx1 = jnp.min(jnp.where(mass_before_BxV < sampling.top_p, sorted_BxV, jnp.inf), axis=-1,
                            keepdims=True)
    logits_BxV = jnp.where(logits_BxV >= threshold_Bx1, logits_BxV, -jnp.inf)
  return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def _round_up(n: int) -> int:
  return -(-n // BUCKET) * BUCKET


@dataclasses.dataclass(frozen=True)
class Batch:
  """Host-side layout of a batch of prompts: right-padded tokens, lengths, per-row budgets."""
  tokens_BxT: np.ndarray
  lengths_B: np.ndarray
  budgets_B: np.ndarray      # new tokens each row may produce (max_new_tokens, or less at the context)
  cache_len: int             # slots per row: enough for every position a row feeds
  out_len: int


def plan_batch(prompts: list[list[int]], max_new_tokens: int, context: int) -> Batch:
  if not prompts:
    raise UserError('no prompts')
  if max_new_tokens < 1:
    raise UserError(f'max_new_tokens must be positive, got {max_new_tokens}')
  lengths = np.array([len(p) for p in prompts], np.int32)
  for i, n in enumerate(lengths):
    if n == 0:
      raise UserError(f'prompt {i} is empty')
    if n > context:
      raise UserError(f'prompt {i} has {n} tokens, more than the model context of {context} tokens '
                      f'(data.seq_len); shorten it')
  budgets = np.minimum(max_new_tokens, context - lengths + 1).astype(np.int32)
  for i in np.flatnonzero(budgets < max_new_tokens):
    logging.warning('prompt %d has %d tokens: generation stops at the context of %d tokens (%d new)',
                    i, lengths[i], context, budgets[i])
  tokens = np.zeros((len(prompts), _round_up(int(lengths.max()))), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = p
  # the last new token is never fed back, so a row uses length + budget - 1 slots
  cache_len = max(tokens.shape[1], _round_up(int(np.max(lengths + budgets - 1))))
  return Batch(tokens, lengths, budgets, cache_len, _round_up(int(budgets.max())))


def trim_at_eos(out_BxN: np.ndarray, count_B: np.ndarray, eos_id: int) -> list[list[int]]:
  """Each row's first count_B ids, cut before its end-of-text."""
  rows = []
  for row, count in zip(out_BxN.tolist(), count_B.tolist()):
    row = row[:count]
    rows.append(row[:row.index(eos_id)] if eos_id in row else row)
  return rows


class Generator:
  """Cached generation for one model graph and sampling setting.

  The prefill is compiled per (batch, padded prompt length, cache length), the decode loop per (batch,
  cache length, output length); both take the parameters as an argument, so any checkpoint of the same
  config reuses them.
  """

  def __init__(self, graphdef, *, context: int, vocab_limit: int, eos_id: int | None, sampling: Sampling):
    self.graphdef = graphdef
    self.context = context
    self.vocab_limit = vocab_limit
    self.eos_id = -1 if eos_id is None else eos_id
    self.sampling = sampling
    self.traces = collections.Counter()
    self._prefill = jax.jit(self._prefill_impl, static_argnames='cache_len')
    self._decode = jax.jit(self._decode_impl, static_argnames='out_len')

  def _prefill_impl(self, params, tokens_BxT, lengths_B, key, *, cache_len):
    self.traces['prefill'] += 1
    model = nnx.merge(self.graphdef, params)
    cache = model.init_cache(tokens_BxT.shape[0], cache_len)
    logits_BxV, cache = model.extend(tokens_BxT, cache, lengths_B)
    return sample_logits(logits_BxV, key, self.sampling, self.vocab_limit), cache

  def _decode_impl(self, params, cache, first_B, budgets_B, key, *, out_len):
    self.traces['decode'] += 1
    out_BxN = jnp.zeros((first_B.shape[0], out_len), jnp.int32).at[:, 0].set(first_B)
    count_B = jnp.ones_like(first_B)
    done_B = (first_B == self.eos_id) | (count_B >= budgets_B)

    def keep_going(carry):
      step, done_B = carry[0], carry[5]
      return (step < out_len) & ~jnp.all(done_B)

    def decode_step(carry):
      step, cache, last_B, out_BxN, count_B, done_B, key = carry
      key, sub = jax.random.split(key)
      model = nnx.merge(self.graphdef, params)  # inside the loop body: NNX objects are per trace
      # a finished row feeds nothing new (0 tokens): its cache length stays put
      logits_BxV, cache = model.extend(last_B[:, None], cache, (~done_B).astype(jnp.int32))
      next_B = sample_logits(logits_BxV, sub, self.sampling, self.vocab_limit)
      out_BxN = out_BxN.at[:, step].set(next_B)
      count_B = count_B + (~done_B).astype(jnp.int32)
      done_B = done_B | (next_B == self.eos_id) | (count_B >= budgets_B)
      return step + 1, cache, next_B, out_BxN, count_B, done_B, key

    carry = (jnp.int32(1), cache, first_B, out_BxN, count_B, done_B, key)
    carry = jax.lax.while_loop(keep_going, decode_step, carry)
    return carry[3], carry[4]

  def generate(self, params, prompts: list[list[int]], max_new_tokens: int, seed: int) -> list[list[int]]:
    """New ids for each prompt (ids lists), end-of-text excluded; the same seed gives the same ids."""
    batch = plan_batch(prompts, max_new_tokens, self.context)
    key_first, key_loop = jax.random.split(jax.random.key(seed))
    first_B, cache = self._prefill(params, batch.tokens_BxT, batch.lengths_B, key_first,
                                   cache_len=batch.cache_len)
    out_BxN, count_B = self._decode(params, cache, first_B, batch.budgets_B, key_loop,
                                    out_len=batch.out_len)
    return trim_at_eos(np.asarray(out_BxN), np.asarray(count_B), self.eos_id)


def read_prompts(prompt: str | None, prompt_file: str | None) -> list[str]:
  """--prompt, and/or one prompt per non-empty line of --prompt_file."""
  prompts = [prompt] if prompt else []
  if prompt_file:
    path = os.path.expanduser(prompt_file)
    try:
      with open(path, encoding='utf-8') as f:
        prompts += [line.rstrip('\n') for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f'cannot read --prompt_file {path}: {e}') from e
  if not prompts:
    raise UserError('--mode=generate needs --prompt or --prompt_file (with at least one prompt)')
  return prompts


def run(cfg, workdir: str, prompts: list[str], max_new_tokens: int, sampling: Sampling, seed: int,
        step: int | None = None, out=sys.stdout) -> list[str]:
  """Samples continuations of `prompts` from the workdir's latest (or given) checkpoint; prints them."""
  restored = loading.load(cfg, workdir, step)
  tokenizer = dataset_lib.tokenizer_for_inference(loading.data_config(cfg, workdir, restored), workdir)
  run_record.inference_tokenizer(restored.meta, tokenizer, restored.vocab_size, restored.step)
  generator = Generator(restored.graphdef, context=cfg.data.seq_len, vocab_limit=tokenizer.vocab_size,
                        eos_id=tokenizer.eos_id, sampling=sampling)
  texts = []
  for start in range(0, len(prompts), MAX_BATCH):
    chunk = prompts[start:start + MAX_BATCH]
    # an empty prompt starts a new document: end-of-text separates documents in training
    ids = [tokenizer.encode(p) or [tokenizer.eos_id] for p in chunk]
    new = generator.generate(restored.params, ids, max_new_tokens, seed=seed + start // MAX_BATCH)
    texts += [p + tokenizer.decode(n) for p, n in zip(chunk, new)]
  if jax.process_index() == 0:
    for i, text in enumerate(texts):
      print(f'--- sample {i} (step {restored.step}) ---\n{text}', file=out, flush=True)
  return texts
