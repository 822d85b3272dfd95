"""Tokenizers: a sentencepiece `.model` or a Hugging Face `tokenizer.json`, behind one interface.

A tokenizer is identified by the sha256 of its file: prepared datasets and checkpoints record it, so a
run never pairs a checkpoint with other ids. The released TokenFormer models use the GPT-NeoX-20B
tokenizer, which ships only as a `tokenizer.json`; a corpus without one gets a sentencepiece BPE trained
on a sample of it (`train_sentencepiece`).
"""
import concurrent.futures
import functools
import hashlib
import io
import itertools
import json
import os
import threading

import numpy as np
import sentencepiece
import tokenizers

from tokenformer_jax.data import fast_encoder
from tokenformer_jax.errors import UserError

# End-of-text names, most specific first: GPT-NeoX / GPT-2 use <|endoftext|>.
EOS_NAMES = ('<|endoftext|>', '</s>', '<eos>', '<|end_of_text|>')
SENTENCEPIECE, HUGGING_FACE = 'sentencepiece', 'huggingface'
FILE_NAMES = {SENTENCEPIECE: 'tokenizer.model', HUGGING_FACE: 'tokenizer.json'}

_MIN_VOCAB = 64
_MAX_TRAIN_SENTENCES = 2_000_000
# sentencepiece silently drops longer training sentences; 8192 chars is at most 32 KiB of UTF-8.
_MAX_TRAIN_CHARS = 8192
# Ids reserved besides learned pieces: <unk>, </s> and the newline symbol.
_NUM_META_PIECES = 3
_NUM_BYTE_PIECES = 256
# Below this, byte pieces would take over a quarter of the ids.
_MIN_BYTE_FALLBACK_VOCAB = 1024
# Unicode normalization forms: each leaves ASCII text unchanged.
_UNICODE_FORMS = ('NFC', 'NFD', 'NFKC', 'NFKD')


class Tokenizer:
  """encode / encode_batch / decode, with vocab_size, eos_id, kind and the file's bytes and sha256."""

  def __init__(self, file_bytes: bytes, name: str):
    self.file_bytes = file_bytes
    self.sha256 = hashlib.sha256(file_bytes).hexdigest()
    self.kind = HUGGING_FACE if _looks_like_json(file_bytes) else SENTENCEPIECE
    if self.kind == HUGGING_FACE:
      try:
        self._hf = tokenizers.Tokenizer.from_str(file_bytes.decode('utf-8'))
      except Exception as e:  # pylint: disable=broad-exception-caught
        raise UserError(f'not a Hugging Face tokenizer.json: {name} ({str(e)[:200]})') from e
      self._fast, self._fast_lock, self._pool = None, threading.Lock(), None
      self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
      ids = [i for i in (self._hf.token_to_id(n) for n in EOS_NAMES) if i is not None]
      if not ids:
        raise UserError(f'tokenizer {name} has no end-of-text token (looked for {", ".join(EOS_NAMES)})')
      self.eos_id = ids[0]
    else:
      try:
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=file_bytes)
      except Exception as e:  # pylint: disable=broad-exception-caught
        raise UserError(f'not a sentencepiece model: {name}') from e
      if self._sp.get_piece_size() == 0:  # an empty file parses as an empty model
        raise UserError(f'not a sentencepiece model: {name}')
      if self._sp.eos_id() < 0:
        raise UserError(f'tokenizer has no end-of-text (eos) piece: {name}')
      self.vocab_size = self._sp.get_piece_size()
      self.eos_id = self._sp.eos_id()

  @property
  def file_name(self) -> str:
    return FILE_NAMES[self.kind]

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    if self.kind == HUGGING_FACE:
      return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]
    return self._sp.encode(texts, out_type=int, num_threads=os.cpu_count() or 1)

  def encode(self, text: str) -> list[int]:
    return self.encode_batch([text])[0]

  def encode_documents(self, docs: list[str], parallel: bool = True) -> list[np.ndarray]:
    """Each document's ids followed by end-of-text, as int64 arrays: the same ids as `encode`.

    parallel: the batch is encoded on all cores (threads); else one document at a time on one core, so
    that a worker per core (Beam's workers) scales without oversubscribing the cores.
    sentencepiece models are fed line by line (newline is a piece of its own, so this changes nothing
    but the batch's parallelism)."""
    if self.kind == HUGGING_FACE:
      return self._hf_documents(docs, parallel)
    chunks, counts = [], []
    for doc in docs:
      lines = doc.split('\n')
      chunks.extend(line + '\n' for line in lines[:-1])
      chunks.append(lines[-1])
      counts.append(len(lines))
    ids = self._sp.encode(chunks, out_type=int, num_threads=(os.cpu_count() or 1) if parallel else 1)
    out, start = [], 0
    for count in counts:
      doc_ids = ids[start:start + count]
      out.append(np.fromiter(itertools.chain(itertools.chain.from_iterable(doc_ids), [self.eos_id]),
                             np.int64, sum(map(len, doc_ids)) + 1))
      start += count
    return out

  @property
  def encoder(self) -> str:
    """Which encoder `encode_documents` uses, and why (prepare prints it)."""
    if self.kind == SENTENCEPIECE:
      return 'sentencepiece'
    fast = self._fast_encoder()
    if isinstance(fast, fast_encoder.FastEncoder):
      return 'tiktoken (the ids of the tokenizer.json, exactly)'
    return f'the Hugging Face tokenizer ({fast})'

  def _fast_encoder(self):
    """The FastEncoder for this file, built on first use, or why there is none (a string)."""
    with self._fast_lock:
      if self._fast is None:
        try:
          self._fast = fast_encoder.FastEncoder(self._hf, json.loads(self.file_bytes))
        except fast_encoder.Unsupported as e:
          self._fast = f'no faster encoder: {e}'
        except (KeyError, TypeError, AttributeError, ValueError) as e:  # a layout this code does not know
          self._fast = f'no faster encoder: unexpected tokenizer.json layout ({type(e).__name__}: {e})'
      return self._fast

  def _threads(self) -> concurrent.futures.ThreadPoolExecutor:
    """A thread per core, kept for the tokenizer's life: each keeps its own encoder (fast_encoder.py)."""
    with self._fast_lock:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1, 'encode')
      return self._pool

  def _hf_documents(self, docs: list[str], parallel: bool) -> list[np.ndarray]:
    """The FastEncoder's ids where it has them, the Hugging Face tokenizer's for the other documents."""
    fast = self._fast_encoder()
    if isinstance(fast, fast_encoder.FastEncoder):
      if parallel and len(docs) > 1:
        found = list(self._threads().map(fast.encode, docs))  # encode releases the GIL
      else:
        found = [fast.encode(doc) for doc in docs]
    else:
      found = [None] * len(docs)
    rest = [i for i, ids in enumerate(found) if ids is None]
    for i, ids in zip(rest, self._hf_ids([docs[i] for i in rest], parallel)):
      found[i] = ids
    out = []
    for ids in found:
      doc = np.empty(len(ids) + 1, np.int64)
      doc[:-1] = ids
      doc[-1] = self.eos_id
      out.append(doc)
    return out

  @functools.cached_property
  def _hf_ascii(self):
    return _without_unicode_normalizer(self._hf, self.file_bytes)

  def _hf_ids(self, docs: list[str], parallel: bool) -> list[list[int]]:
    """encode_batch_fast skips the character offsets (ids are unchanged); ASCII documents skip a
    Unicode normalizer (the identity on ASCII)."""
    if not parallel:
      return [(self._hf_ascii if doc.isascii() else self._hf).encode_batch_fast(
          [doc], add_special_tokens=False)[0].ids for doc in docs]
    ascii_docs = [i for i, doc in enumerate(docs) if doc.isascii()]
    other_docs = [i for i, doc in enumerate(docs) if not doc.isascii()]
    ids = [None] * len(docs)
    for tok, group in ((self._hf_ascii, ascii_docs), (self._hf, other_docs)):
      encodings = tok.encode_batch_fast([docs[i] for i in group], add_special_tokens=False)
      for i, e in zip(group, encodings):
        ids[i] = e.ids
    return ids

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    if self.kind == HUGGING_FACE:
      return self._hf.decode(ids, skip_special_tokens=True)
    return self._sp.decode(ids)


def _without_unicode_normalizer(hf: tokenizers.Tokenizer, file_bytes: bytes) -> tokenizers.Tokenizer:
  """`hf` without its normalizer when that is only Unicode normalization (NFC for GPT-NeoX-20B), which
  leaves ASCII text as it is: the tokenizer for ASCII documents. It shares `hf`'s model (the vocabulary
  and merges); with any other normalizer, or none, this is `hf` itself."""
  if hf.normalizer is None:
    return hf
  norm = json.loads(hf.normalizer.__getstate__())
  forms = norm.get('normalizers', []) if norm.get('type') == 'Sequence' else [norm]
  if not forms or any(n.get('type') not in _UNICODE_FORMS for n in forms):
    return hf
  ascii_tok = tokenizers.Tokenizer.from_str(file_bytes.decode('utf-8'))
  ascii_tok.normalizer = None
  ascii_tok.model = hf.model
  return ascii_tok


def _looks_like_json(data: bytes) -> bool:
  return data.lstrip()[:1] == b'{'


def load_file(path: str) -> Tokenizer:
  """A tokenizer file of either format (told apart by content: a tokenizer.json is a JSON object)."""
  path = os.path.expanduser(path)
  data = _read(path)
  if path.endswith('.json') and not _looks_like_json(data):
    raise UserError(f'not a Hugging Face tokenizer.json: {path}')
  return Tokenizer(data, path)


def file_sha256(path: str) -> str:
  """The sha256 that `load_file(path).sha256` has, without building the tokenizer."""
  return hashlib.sha256(_read(os.path.expanduser(path))).hexdigest()


def _read(path: str) -> bytes:
  if not os.path.isfile(path):
    raise UserError(f'tokenizer file not found: {path}')
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise UserError(f'cannot read tokenizer file {path}: {e.strerror}') from e


def training_sentences(texts) -> list[str]:
  """Non-empty lines of `texts`, cut to a length sentencepiece keeps, at most 2M of them."""
  sentences = []
  for text in texts:
    for line in text.split('\n'):
      for start in range(0, len(line), _MAX_TRAIN_CHARS):
        piece = line[start:start + _MAX_TRAIN_CHARS]
        if piece.strip():
          sentences.append(piece)
          if len(sentences) == _MAX_TRAIN_SENTENCES:
            return sentences
  return sentences


def trainer_settings(sentences: list[str], vocab_size: int) -> dict:
  """Deterministic BPE trainer settings for `vocab_size` pieces."""
  if vocab_size < _MIN_VOCAB:
    raise UserError(f'vocabulary size must be at least {_MIN_VOCAB}, got {vocab_size}')
  # character_coverage=1.0 makes every character a piece; sentencepiece uses ' ' as U+2581.
  num_chars = len(set(''.join(sentences).replace(' ', '\u2581')))
  needed = num_chars + _NUM_META_PIECES
  if vocab_size < needed:
    raise UserError(f'vocabulary size {vocab_size} is too small for this corpus: it has '
                    f'{num_chars} distinct characters, so at least {needed} is needed')
  return dict(
      model_type='bpe',
      vocab_size=vocab_size,
      # Byte pieces take 256 ids, which small vocabularies cannot spare. Without them only characters
      # absent from the training sample become <unk>.
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
      # Newlines carry the text's structure, so they get their own id, and identity normalization
      # without a dummy prefix makes decode(encode(text)) == text.
      user_defined_symbols=['\n'],
      normalization_rule_name='identity',
      add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      minloglevel=2,
  )


def train_sentencepiece(texts, vocab_size: int) -> Tokenizer:
  """A BPE model of `vocab_size` pieces trained in memory on `texts` (documents)."""
  sentences = training_sentences(texts)
  if not sentences:
    raise UserError('no text to train a tokenizer on')
  settings = trainer_settings(sentences, vocab_size)
  writer = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=writer,
                                             **settings)
  except RuntimeError as e:
    reason = str(e).split(']')[-1].strip() or str(e)
    raise UserError(f'sentencepiece training failed: {reason}') from e
  tokenizer = Tokenizer(writer.getvalue(), 'the trained tokenizer')
  if tokenizer.vocab_size != vocab_size:
    raise UserError(f'sentencepiece made {tokenizer.vocab_size} pieces, not the {vocab_size} asked for')
  return tokenizer
