"""Generation without a KV cache: the training forward pass over the whole buffer for every new token.

It samples exactly as generate.Generator does (same budgets, same random keys), so it is the reference
the cached path must match token for token (tests/inference/generate_test.py) and the baseline that
benchmarks/decode.py times the cache against. Not part of the library: nothing else needs it.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tokenformer_jax.inference import generate


@functools.partial(jax.jit, static_argnames=('graphdef', 'sampling', 'vocab_limit'))
def _full_forward_next_ids(params, buffer_BxW, last_B, key, *, graphdef, sampling, vocab_limit):
  """The training forward pass over the whole buffer, sampled at each row's last position."""
  logits_BxWxV = nnx.merge(graphdef, params)(buffer_BxW)
  logits_BxV = jnp.take_along_axis(logits_BxWxV, last_B[:, None, None], axis=1)[:, 0]
  return generate.sample_logits(logits_BxV, key, sampling, vocab_limit)


def generate_without_cache(graphdef, params, prompts: list[list[int]], max_new_tokens: int, *,
                           context: int, vocab_limit: int, eos_id: int | None,
                           sampling: generate.Sampling, seed: int) -> list[list[int]]:
  """Like Generator.generate (same budgets, same random keys), but every token runs the training
  forward pass over the whole buffer and samples at each row's last position."""
  eos_id = -1 if eos_id is None else eos_id
  batch = generate.plan_batch(prompts, max_new_tokens, context)
  B = len(prompts)
  next_ids = functools.partial(_full_forward_next_ids, graphdef=graphdef, sampling=sampling,
                               vocab_limit=vocab_limit)
  buffer_BxW = np.zeros((B, batch.cache_len + 1), np.int32)
  buffer_BxW[:, :batch.tokens_BxT.shape[1]] = batch.tokens_BxT
  lengths_B = batch.lengths_B.copy()
  out_BxN = np.zeros((B, batch.out_len), np.int32)
  count_B = np.zeros(B, np.int32)
  done_B = np.zeros(B, bool)
  key, key_loop = jax.random.split(jax.random.key(seed))
  for step in range(batch.out_len):
    if step:
      key_loop, key = jax.random.split(key_loop)
    ids_B = np.asarray(next_ids(params, buffer_BxW, lengths_B - 1, key))
    out_BxN[:, step] = ids_B
    live = ~done_B
    count_B += live
    buffer_BxW[live, lengths_B[live]] = ids_B[live]
    lengths_B += live
    done_B |= (ids_B == eos_id) | (count_B >= batch.budgets_B)
    if done_B.all():
      break
  return generate.trim_at_eos(out_BxN, count_B, eos_id)
