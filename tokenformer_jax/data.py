"""Corpus -> sentencepiece tokenizer -> flat token file -> grain input pipeline.

The expensive steps (tokenizer training, tokenization) run once per corpus and tokenizer and are
cached in a directory; later runs memory-map the cached token file, so startup stays cheap and
many processes can share one cache.
"""

import dataclasses
import hashlib
import itertools
import json
import math
import os
import tempfile

import grain
import numpy as np
import sentencepiece

from tokenformer_jax import corpus
from tokenformer_jax.errors import UserError

# Bump when the cache layout or the tokenization scheme changes, so old caches are rebuilt.
_CACHE_VERSION = 1
_TOKENIZER_FILE = 'tokenizer.model'
_TOKENS_FILE = 'tokens.bin'
_META_FILE = 'meta.json'
# Windows are cheap memmap slices, so a few threads and a short buffer suffice (grain's default
# is 16 threads and 500 prefetched batches).
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A tokenized corpus split into train and validation token streams."""
  tokenizer: sentencepiece.SentencePieceProcessor
  train_tokens: np.ndarray
  val_tokens: np.ndarray
  vocab_size: int
  eos_id: int


def _tokenize(tokenizer: sentencepiece.SentencePieceProcessor, docs: list[str],
              dtype: np.dtype) -> np.ndarray:
  """Encodes all lines in one batched call; joins them with eos after each document."""
  chunks, chunks_per_doc = [], []
  for doc in docs:
    lines = doc.split('\n')
    chunks.extend(line + '\n' for line in lines[:-1])
    chunks.append(lines[-1])
    chunks_per_doc.append(len(lines))
  ids = tokenizer.encode(chunks, out_type=int, num_threads=os.cpu_count() or 1)
  eos = [tokenizer.eos_id()]
  pieces, start = [], 0
  for count in chunks_per_doc:
    pieces.extend(ids[start:start + count])
    pieces.append(eos)
    start += count
  total = sum(len(p) for p in pieces)
  return np.fromiter(itertools.chain.from_iterable(pieces), dtype=dtype, count=total)


def _fingerprint(docs: list[str], tokenizer_key: str) -> str:
  """Hashes everything the cached files depend on."""
  h = hashlib.sha256(f'v{_CACHE_VERSION}\n{tokenizer_key}\n'.encode())
  for doc in docs:
    data = doc.encode('utf-8')
    h.update(len(data).to_bytes(8, 'little'))  # Length-prefixed: document boundaries count.
    h.update(data)
  return h.hexdigest()


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _atomic_write(path: str, write_fn) -> None:
  """Writes via a temp file in the same dir and os.replace, so readers never see half a file."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f'.{os.path.basename(path)}.')
  try:
    with os.fdopen(fd, 'wb') as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _load_cache(cache_dir: str, fingerprint: str):
  """Returns (model bytes, meta) if the cache is complete and matches `fingerprint`, else None."""
  try:
    with open(os.path.join(cache_dir, _META_FILE)) as f:
      meta = json.load(f)
    if meta.get('fingerprint') != fingerprint:
      return None
    with open(os.path.join(cache_dir, _TOKENIZER_FILE), 'rb') as f:
      model_bytes = f.read()
    tokens_size = os.path.getsize(os.path.join(cache_dir, _TOKENS_FILE))
    if (_sha256(model_bytes) != meta['tokenizer_sha256'] or
        tokens_size != meta['length'] * np.dtype(meta['dtype']).itemsize):
      return None
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return model_bytes, meta


def _build_cache(cache_dir: str, fingerprint: str, docs: list[str], model_bytes: bytes,
                 settings: dict | None) -> tuple[bytes, dict]:
  """Tokenizes `docs` and writes tokenizer, tokens and meta (last, as the commit marker)."""
  # Drop the old meta first: until the new one lands, no half-rebuilt cache can look valid.
  meta_path = os.path.join(cache_dir, _META_FILE)
  try:
    os.remove(meta_path)
  except FileNotFoundError:
    pass
  tokenizer = corpus.load_tokenizer(model_bytes, os.path.join(cache_dir, _TOKENIZER_FILE))
  vocab_size = tokenizer.get_piece_size()
  if settings is not None and vocab_size != settings['vocab_size']:
    raise UserError(f'sentencepiece made {vocab_size} pieces, not data.vocab_size '
                    f'{settings["vocab_size"]}')
  dtype = np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)
  tokens = _tokenize(tokenizer, docs, dtype)
  meta = dict(fingerprint=fingerprint, dtype=dtype.name, length=int(tokens.size),
              tokenizer_sha256=_sha256(model_bytes), vocab_size=vocab_size,
              num_documents=len(docs))
  _atomic_write(os.path.join(cache_dir, _TOKENIZER_FILE), lambda f: f.write(model_bytes))
  _atomic_write(os.path.join(cache_dir, _TOKENS_FILE), tokens.tofile)
  _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=2).encode()))
  return model_bytes, meta


def cache_dir_for(data_cfg, workdir: str) -> str:
  """Where a run's tokenizer and token file are cached: data.cache_dir, else WORKDIR/data."""
  return data_cfg.cache_dir or os.path.join(workdir, 'data')


def prepare_corpus(data_cfg, cache_dir: str) -> Corpus:
  """Reads, tokenizes and splits the corpus, reusing `cache_dir` when nothing changed."""
  val_fraction = float(data_cfg.val_fraction)
  if not 0.0 < val_fraction <= 0.5:
    raise UserError(f'data.val_fraction must be in (0, 0.5], got {data_cfg.val_fraction}')
  docs = corpus.read_documents(data_cfg.corpus)
  if data_cfg.tokenizer:
    model_bytes = corpus.read_tokenizer_file(data_cfg.tokenizer)
    corpus.load_tokenizer(model_bytes, data_cfg.tokenizer)  # Fail early on a bad file.
    sentences, settings = None, None
    tokenizer_key = 'model:' + _sha256(model_bytes)
  else:
    model_bytes = None
    sentences = corpus.training_sentences(docs)
    settings = corpus.trainer_settings(sentences, int(data_cfg.vocab_size))
    tokenizer_key = 'train:' + json.dumps(settings, sort_keys=True)
  fingerprint = _fingerprint(docs, tokenizer_key)
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create data cache directory {cache_dir}: {e.strerror}') from e
  cached = _load_cache(cache_dir, fingerprint)
  if cached is None:
    if model_bytes is None:
      model_bytes = corpus.train_tokenizer(sentences, settings)
    cached = _build_cache(cache_dir, fingerprint, docs, model_bytes, settings)
  model_bytes, meta = cached

  tokenizer = corpus.load_tokenizer(model_bytes, os.path.join(cache_dir, _TOKENIZER_FILE))
  tokens_N = np.memmap(os.path.join(cache_dir, _TOKENS_FILE), dtype=meta['dtype'], mode='r',
                       shape=(meta['length'],))
  num_val = math.ceil(tokens_N.size * val_fraction)
  if tokens_N.size - num_val < 2:
    raise UserError(f'corpus too small: {tokens_N.size} tokens in total')
  return Corpus(
      tokenizer=tokenizer,
      train_tokens=tokens_N[:tokens_N.size - num_val],
      val_tokens=tokens_N[tokens_N.size - num_val:],
      vocab_size=tokenizer.get_piece_size(),
      eos_id=tokenizer.eos_id(),
  )


class _WindowSource:
  """Random access to windows of seq_len + 1 tokens at stride seq_len, as int32."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    self._tokens = tokens
    self._seq_len = seq_len
    self._len = (tokens.shape[0] - 1) // seq_len

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> np.ndarray:
    if not 0 <= index < self._len:
      raise IndexError(f'window {index} out of range [0, {self._len})')
    start = index * self._seq_len
    return np.array(self._tokens[start:start + self._seq_len + 1], dtype=np.int32)

  def __repr__(self) -> str:
    return f'_WindowSource(windows={self._len}, seq_len={self._seq_len})'


def _check_sizes(tokens: np.ndarray, seq_len: int, batch_size: int) -> None:
  if tokens.ndim != 1:
    raise ValueError(f'tokens must be 1-D, got shape {tokens.shape}')
  if seq_len < 1:
    raise UserError(f'sequence length must be positive, got {seq_len}')
  if batch_size < 1:
    raise UserError(f'batch size must be positive, got {batch_size}')


def train_iterator(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Endless shuffled [batch_size, seq_len + 1] int32 batches of this process's windows.

  Windows are shuffled globally and then dealt out round-robin, so every epoch the processes
  together see each window exactly once, and a global batch does not pair neighbouring windows
  (which sharding before shuffling with a shared seed would do). Grain reseeds the shuffle each
  epoch; batches run across epoch boundaries, so no window is ever dropped.
  """
  _check_sizes(tokens, seq_len, batch_size)
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  if seed < 0:
    raise UserError(f'seed must be non-negative, got {seed}')
  source = _WindowSource(tokens, seq_len)
  per_process = len(source) // process_count
  if per_process < batch_size:
    shards = f' per process ({process_count} processes)' if process_count > 1 else ''
    raise UserError(f'corpus too small: {per_process} windows of length {seq_len + 1}{shards} '
                    f'for batch {batch_size}')
  # Grain shuffles epoch e with seed + e, so runs with seeds s and s + 1 would replay the same
  # orders one epoch apart; hashing the seed keeps runs with nearby seeds unrelated.
  grain_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
  ds = grain.MapDataset.source(source).shuffle(seed=grain_seed)
  ds = ds[process_index::process_count].repeat()
  ds = ds.batch(batch_size, drop_remainder=True)
  return iter(ds.to_iter_dataset(_READ_OPTIONS))


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int,
                 max_batches: int) -> list[np.ndarray]:
  """The first consecutive windows of `tokens` as up to max_batches [batch_size, seq_len + 1]."""
  _check_sizes(tokens, seq_len, batch_size)
  if max_batches < 1:
    raise UserError(f'number of eval batches must be positive, got {max_batches}')
  num_windows = max(tokens.shape[0] - 1, 0) // seq_len
  num_batches = min(max_batches, num_windows // batch_size)
  if num_batches == 0:
    raise UserError(f'validation split too small: {tokens.shape[0]} tokens give {num_windows} '
                    f'windows of length {seq_len + 1}, fewer than batch {batch_size}')
  num_rows = num_batches * batch_size
  windows_RxW = np.lib.stride_tricks.sliding_window_view(
      np.asarray(tokens[:num_rows * seq_len + 1]), seq_len + 1)[::seq_len]
  batches_NxBxW = windows_RxW.astype(np.int32).reshape(num_batches, batch_size, seq_len + 1)
  return list(batches_NxBxW)
