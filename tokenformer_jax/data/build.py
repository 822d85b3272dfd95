"""Preparing a corpus once: documents → tokenized ArrayRecord shards + manifest.

The unit of work is a shard: a group of whole input files (balanced by size), read, tokenized and
written as one train shard and one validation shard. Shards are independent, so the same `process`
runs in a loop in-process (small corpora, `--mode=train` on raw text) or as the element function of an
Apache Beam pipeline (any runner: DirectRunner on one machine, Dataflow, Flink, Spark), and a rerun
reuses every shard that was completed (`DIR/.prepare/<shard>.json` records it). Each shard streams its
files, so a worker holds one batch of documents at a time, whatever the corpus size.

A document goes to validation when the hash of its name (`<file name>:<index in the file>`) falls
below `validation_fraction`: deterministic, independent of the runner and the shard count.
"""
import contextlib
import dataclasses
import hashlib
import json
import os
from concurrent import futures

import numpy as np

from tokenformer_jax.data import manifest as manifest_lib
from tokenformer_jax.data import shards, sources
from tokenformer_jax.data import tokenizer as tokenizer_lib
from tokenformer_jax.errors import UserError
from tokenformer_jax.runtime import workdir_lock

# Training a tokenizer reads at most this much text: an equal share from each input file, from its
# start, in file order (deterministic), then at most 2M lines of it (tokenizer.training_sentences).
TOKENIZER_SAMPLE_BYTES = 64 << 20
# A batch of documents is encoded, then written; per core that encodes it, so a batch holds a bounded
# share of the tokenizer's output and all cores get work.
_BATCH_DOCUMENTS_PER_CORE = 64
_BATCH_CHARS_PER_CORE = 1 << 20
_STATE_DIR = '.prepare'


@dataclasses.dataclass(frozen=True)
class Options:
  inputs: str                       # comma-separated paths and globs, or 'kjv'
  output: str
  tokenizer: str = ''               # a sentencepiece .model or a tokenizer.json
  train_vocab: int = 0              # without a tokenizer: train a sentencepiece BPE of this size
  text_key: str = 'text'
  num_shards: int = 0               # 0: one per input file, at most 256
  validation_fraction: float = 0.0
  record_tokens: int = shards.RECORD_TOKENS


@dataclasses.dataclass(frozen=True)
class Task:
  """One shard's work; plain data, so a Beam runner can ship it to a worker."""
  index: int
  num_shards: int
  files: tuple
  output: str
  text_key: str
  validation_fraction: float
  dtype: str
  record_tokens: int
  key: str                          # identifies the whole preparation: inputs, tokenizer, options


def shard_file(split: str, index: int, num_shards: int) -> str:
  return f'{split}-{index:05d}-of-{num_shards:05d}.array_record'


def is_validation(doc_name: str, fraction: float) -> bool:
  h = int.from_bytes(hashlib.sha256(doc_name.encode()).digest()[:8], 'little')
  return h < fraction * 2.0**64


def plan_shards(files: list[str], sizes: list[int], num_shards: int) -> list[tuple]:
  """Files in num_shards groups of about equal bytes (largest first onto the lightest group), each
  group in file order."""
  groups = [[] for _ in range(num_shards)]
  loads = [0] * num_shards
  for i in sorted(range(len(files)), key=lambda i: (-sizes[i], files[i])):
    g = loads.index(min(loads))
    groups[g].append(i)
    loads[g] += sizes[i]
  return [tuple(files[i] for i in sorted(g)) for g in groups]


def _done_path(task: Task) -> str:
  return os.path.join(task.output, _STATE_DIR, f'{task.index:05d}-of-{task.num_shards:05d}.json')


def _completed(task: Task) -> dict | None:
  done = manifest_lib.read_json(_done_path(task))
  if not done or done.get('key') != task.key:
    return None
  try:
    for entry in done['shards'].values():
      manifest_lib.check_shard(task.output, entry)
  except UserError:
    return None
  return done


def _count_finished(tasks: list[Task]) -> int:
  """How many tasks an earlier, stopped prepare completed (their shards are kept, not rewritten)."""
  with futures.ThreadPoolExecutor(16) as pool:  # remote outputs: a round trip or two each
    return sum(done is not None for done in pool.map(_completed, tasks))


def process(task: Task, tokenizer, parallel: bool = True) -> dict:
  """Writes the task's train and validation shards (or finds them complete); returns their entries.

  parallel: the tokenizer encodes on all cores (one process doing all the work); else on one core
  (a Beam worker: the runner runs a worker per core)."""
  done = _completed(task)
  if done is not None:
    return done
  writers = {split: shards.Writer(os.path.join(task.output, shard_file(split, task.index, task.num_shards)),
                                  np.dtype(task.dtype), task.record_tokens)
             for split in manifest_lib.SPLITS}
  cores = (os.cpu_count() or 1) if parallel else 1
  try:
    batch, chars = [], 0
    for path in task.files:
      name = 'kjv' if path == sources.KJV else os.path.basename(path)
      for number, doc in enumerate(sources.documents(path, task.text_key)):
        batch.append((is_validation(f'{name}:{number}', task.validation_fraction), doc))
        chars += len(doc)
        if len(batch) >= _BATCH_DOCUMENTS_PER_CORE * cores or chars >= _BATCH_CHARS_PER_CORE * cores:
          _write_batch(batch, tokenizer, writers, parallel)
          batch, chars = [], 0
    _write_batch(batch, tokenizer, writers, parallel)
    entries = {split: w.close() for split, w in writers.items()}
  except BaseException:
    for w in writers.values():
      w.abort()
    raise
  done = {'key': task.key, 'shards': entries}
  manifest_lib.write_json(_done_path(task), done)
  return done


def _write_batch(batch, tokenizer, writers, parallel: bool) -> None:
  if not batch:
    return
  for (validation, _), ids in zip(batch, tokenizer.encode_documents([d for _, d in batch], parallel)):
    writers['validation' if validation else 'train'].add(ids)


def sample_documents(files: list[str], text_key: str, budget: int = TOKENIZER_SAMPLE_BYTES):
  """Documents for tokenizer training: up to budget / len(files) characters from the start of each."""
  share = max(budget // len(files), 1)
  for path in files:
    taken = 0
    for doc in sources.documents(path, text_key):
      yield doc[:share - taken]
      taken += min(len(doc), share - taken)
      if taken >= share:
        break


def _tokenizer(opts: Options, files: list[str]):
  if opts.tokenizer:
    return tokenizer_lib.load_file(opts.tokenizer)
  if opts.train_vocab <= 0:
    raise UserError('give a tokenizer file (--tokenizer) or a vocabulary size to train one '
                    '(--vocab_size)')
  return tokenizer_lib.train_sentencepiece(list(sample_documents(files, opts.text_key)), opts.train_vocab)


def request(opts: Options, files: list[str]) -> dict:
  """What a prepared dataset was made from; two preparations with equal requests are equal."""
  return {'inputs': opts.inputs, 'fingerprint': sources.fingerprint(files), 'files': len(files),
          'tokenizer': (f'file sha256 {tokenizer_lib.file_sha256(opts.tokenizer)}' if opts.tokenizer
                        else f'sentencepiece bpe {opts.train_vocab}'),
          'text_key': opts.text_key, 'num_shards': opts.num_shards,
          'validation_fraction': opts.validation_fraction, 'record_tokens': opts.record_tokens}


def run(opts: Options, beam_args: list[str] | None = None, log=print) -> dict:
  """Prepares opts.inputs into opts.output (in-process, or on Beam with `beam_args`); returns the
  manifest. An output that already holds this preparation is returned as it is; one that holds
  another is refused, never overwritten. A local output is locked for the duration (one prepare or
  run at a time). Bad input found before the shards are written leaves the output as it was; a
  prepare stopped later leaves its finished shards and their records in `.prepare/` for a rerun."""
  if not 0.0 <= opts.validation_fraction < 1.0:
    raise UserError(f'validation fraction must be in [0, 1), got {opts.validation_fraction}')
  if opts.num_shards < 0 or opts.record_tokens < 1:
    raise UserError('--num_shards must be at least 0 and the record size at least 1')
  if beam_args is not None:
    from tokenformer_jax.data import beam_pipeline  # pylint: disable=import-outside-toplevel
    beam_pipeline.check_installed()
  # An object store has no exclusive create: a remote output is not locked (docs/data.md).
  remote = sources.is_remote(opts.output)
  with contextlib.nullcontext() if remote else workdir_lock.hold_here(opts.output):
    try:
      return _prepare(opts, beam_args, log)
    finally:  # stopped before any shard was finished: no state to resume, so none is left
      _remove_if_empty(os.path.join(opts.output, _STATE_DIR))


def _remove_if_empty(directory: str) -> None:
  if not sources.is_remote(directory):
    with contextlib.suppress(OSError):
      os.rmdir(directory)


def _check_has_text(files: list[str], opts: Options) -> None:
  """Reads up to the first document, so an input without text is refused before anything is written."""
  for path in files:
    for _ in sources.documents(path, opts.text_key):
      return
  raise UserError(f'the input has no text: {opts.inputs}')


def _prepare(opts: Options, beam_args: list[str] | None, log) -> dict:
  files = sources.expand(opts.inputs)
  req = request(opts, files)
  existing = manifest_lib.read_json(manifest_lib.path(opts.output))
  if existing is not None:
    if existing.get('request') == req:
      log(f'{opts.output} already holds this dataset')
      return manifest_lib.read(opts.output)
    raise UserError(f'{opts.output} already holds a dataset prepared from other inputs or options; '
                    f'prepare into a new directory')
  _check_has_text(files, opts)
  tokenizer = _tokenizer(opts, files)
  log(f'encoding with {tokenizer.encoder}')
  key = hashlib.sha256(json.dumps({**req, 'sha256': tokenizer.sha256, 'normalization': sources.NORMALIZATION},
                                  sort_keys=True).encode()).hexdigest()
  if not sources.is_remote(opts.output):
    try:
      os.makedirs(os.path.join(opts.output, _STATE_DIR), exist_ok=True)
    except OSError as e:
      raise UserError(f'cannot create {opts.output}: {e.strerror}') from e
  sizes = [sources.size(f) for f in files]
  num_shards = min(opts.num_shards or min(len(files), 256), len(files))
  if opts.num_shards > len(files):
    log(f'{len(files)} input files: writing {num_shards} shards, not {opts.num_shards} (a file is never '
        f'split across shards)')
  dtype = shards.dtype_for(tokenizer.vocab_size).str
  tasks = [Task(i, num_shards, group, opts.output, opts.text_key, opts.validation_fraction, dtype,
                opts.record_tokens, key)
           for i, group in enumerate(plan_shards(files, sizes, num_shards))]
  reused = _count_finished(tasks)
  if reused:
    log(f'{opts.output}: reusing {reused} of {len(tasks)} shards that an earlier prepare finished')
  if beam_args is None:
    results = [process(t, tokenizer) for t in tasks]
  else:
    from tokenformer_jax.data import beam_pipeline  # pylint: disable=import-outside-toplevel
    beam_pipeline.run(tasks, tokenizer, beam_args, process)
    results = [_completed(t) for t in tasks]
    missing = [t.index for t, r in zip(tasks, results) if r is None]
    if missing:
      raise UserError(f'the pipeline finished without shards {missing}; rerun to complete them')
  m = {'version': manifest_lib.VERSION, 'format': 'array_record', 'dtype': dtype,
       'record_tokens': opts.record_tokens, 'request': req, 'input_bytes': sum(sizes),
       'tokenizer': {'file': tokenizer.file_name, 'kind': tokenizer.kind, 'sha256': tokenizer.sha256,
                     'vocab_size': tokenizer.vocab_size, 'eos_id': tokenizer.eos_id},
       'splits': {}}
  for split in manifest_lib.SPLITS:
    entries = [r['shards'][split] for r in results]
    m['splits'][split] = {'tokens': sum(e['tokens'] for e in entries),
                          'documents': sum(e['documents'] for e in entries),
                          'shards': [e for e in entries if e['tokens']]}
  if m['splits']['train']['tokens'] == 0:
    raise UserError(f'all {m["splits"]["validation"]["documents"]} documents of {opts.inputs} fell in '
                    f'the validation split: lower --val_fraction')
  sources.write_bytes(os.path.join(opts.output, tokenizer.file_name), tokenizer.file_bytes)
  manifest_lib.write_json(manifest_lib.path(opts.output), m)
  return m

