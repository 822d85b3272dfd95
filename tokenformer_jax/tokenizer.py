"""Tokenizers for generation and evaluation: sentencepiece (ours) or a Hugging Face `tokenizer.json`.

Training always uses sentencepiece (data.py). Inference also accepts a `tokenizer.json` (the `tokenizers`
package), because the released reference checkpoints use the
GPT-NeoX-20B tokenizer, which ships only in that format. Both are wrapped to the same small interface:
encode(text) → ids, decode(ids) → text, vocab_size, eos_id.

`for_run` picks the tokenizer of a run: `data.tokenizer` when set (a `.json` file → Hugging Face, else a
sentencepiece model), otherwise the one the training run built into the workdir's data cache.
"""
import os

import sentencepiece
import tokenizers

from tokenformer_jax import corpus as corpus_lib
from tokenformer_jax import data
from tokenformer_jax.errors import UserError

# End-of-text names, most specific first: GPT-NeoX / GPT-2 use <|endoftext|>.
EOS_NAMES = ('<|endoftext|>', '</s>', '<eos>', '<|end_of_text|>')


class SentencePieceTokenizer:
  """A loaded sentencepiece model (newlines and spaces round-trip: see corpus.trainer_settings)."""

  def __init__(self, processor: sentencepiece.SentencePieceProcessor):
    self.processor = processor
    self.vocab_size = processor.get_piece_size()
    self.eos_id = processor.eos_id()

  def encode(self, text: str) -> list[int]:
    return self.processor.encode(text, out_type=int)

  def decode(self, ids: list[int]) -> str:
    return self.processor.decode([int(i) for i in ids])


class HuggingFaceTokenizer:
  """A `tokenizer.json` read with the `tokenizers` package; special tokens are dropped on decode."""

  def __init__(self, path: str):
    try:
      self.tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise UserError(f'not a Hugging Face tokenizer.json: {path} ({str(e)[:200]})') from e
    self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
    ids = [self.tokenizer.token_to_id(name) for name in EOS_NAMES]
    ids = [i for i in ids if i is not None]
    if not ids:
      raise UserError(f'tokenizer {path} has no end-of-text token (looked for {", ".join(EOS_NAMES)})')
    self.eos_id = ids[0]

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: list[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def load_file(path: str):
  """A tokenizer file: `*.json` → Hugging Face, anything else → a sentencepiece model."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise UserError(f'tokenizer file not found: {path}')
  if path.endswith('.json'):
    return HuggingFaceTokenizer(path)
  return SentencePieceTokenizer(corpus_lib.load_tokenizer(corpus_lib.read_tokenizer_file(path), path))


def for_run(cfg, workdir: str, need_corpus: bool = False):
  """(tokenizer, corpus or None) of the run in `workdir`.

  The corpus (the data cache, built if absent) is prepared only when needed: without `data.tokenizer`
  (the tokenizer lives in it) or when `need_corpus` (the validation split). A Hugging Face tokenizer has
  no data cache, since data.py tokenizes with sentencepiece only.
  """
  name = cfg.data.tokenizer
  if name and name.endswith('.json'):
    if need_corpus:
      raise UserError(f'the validation split is tokenized with sentencepiece; with the Hugging Face '
                      f'tokenizer {name} evaluate a text file instead (--eval_file)')
    return load_file(name), None
  if name and not need_corpus:
    return load_file(name), None
  corpus = data.prepare_corpus(cfg.data, data.cache_dir_for(cfg.data, workdir))
  return SentencePieceTokenizer(corpus.tokenizer), corpus
