"""Sampling text from a model: a simple full-forward sampler (no KV cache) compiled once per length.

Each new token re-runs the model over a fixed-size buffer; causality makes the not-yet-written tail
irrelevant, so one compilation serves every step.
"""
import jax
import jax.numpy as jnp
import numpy as np


def sample_tokens(apply_fn, params, prompt_ids: list[int], num_new: int, seq_len: int, *, vocab_limit: int,
                  temperature: float = 0.8, top_k: int = 40, seed: int = 0) -> list[int]:
  """Extends one prompt by num_new tokens; apply_fn(params, tokens [1, T]) → logits [1, T, V].

  Only ids < vocab_limit (the tokenizer's real vocab, not the padding) are ever sampled. The window slides
  when prompt + new tokens exceed seq_len.
  """
  if not prompt_ids:
    raise ValueError('the prompt is empty')

  @jax.jit
  def next_token(params, buffer_1xT, length, key):
    logits_V = apply_fn(params, buffer_1xT)[0, length - 1]
    logits_V = jnp.where(jnp.arange(logits_V.shape[0]) < vocab_limit, logits_V, -jnp.inf)
    if temperature <= 0:
      return jnp.argmax(logits_V)
    kth = jax.lax.top_k(logits_V, top_k)[0][-1] if top_k else -jnp.inf
    logits_V = jnp.where(logits_V >= kth, logits_V, -jnp.inf)
    return jax.random.categorical(key, logits_V / temperature)

  ids = list(prompt_ids)
  key = jax.random.key(seed)
  for _ in range(num_new):
    window = ids[-seq_len:]
    buffer = np.zeros((1, seq_len), np.int32)
    buffer[0, :len(window)] = window
    key, sub = jax.random.split(key)
    ids.append(int(next_token(params, jnp.asarray(buffer), len(window), sub)))
  return ids[len(prompt_ids):]
