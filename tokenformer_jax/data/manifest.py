"""A prepared dataset's manifest: `DIR/manifest.json`, written last, so its presence means complete.

It records the shards of each split (train, validation) with their token, document, record and byte
counts, the token dtype and record size, the tokenizer (its file in DIR, kind, sha256, vocabulary size,
end-of-text id) and what was prepared from (the inputs' fingerprint and the options). Opening a dataset
reads this file, stats the shards and checks their record and token counts against it (each shard's
record index and last record); no other token is read before training starts.
"""
import json
import os
from concurrent import futures

from tokenformer_jax.data import shards, sources
from tokenformer_jax.errors import UserError

FILE = 'manifest.json'
VERSION = 1
SPLITS = ('train', 'validation')
_REQUIRED = ('version', 'dtype', 'record_tokens', 'tokenizer', 'splits')
_REQUIRED_TOKENIZER = ('file', 'sha256')
_CHECK_THREADS = 16


def path(dataset_dir: str) -> str:
  return os.path.join(dataset_dir, FILE)


def write_json(file_path: str, value: dict) -> None:
  sources.write_bytes(file_path, json.dumps(value, indent=2, sort_keys=True).encode())


def read_json(file_path: str) -> dict | None:
  """The JSON object at file_path, None if absent; a UserError if it is not valid JSON."""
  try:
    if sources.is_remote(file_path):
      fs = sources.filesystems()
      if not fs.exists(file_path):
        return None
      with fs.open(file_path) as f:
        data = f.read()
    else:
      with open(file_path, 'rb') as f:
        data = f.read()
  except FileNotFoundError:
    return None
  except OSError as e:
    raise UserError(f'cannot read {file_path}: {e.strerror}') from e
  try:
    value = json.loads(data)
  except ValueError as e:
    raise UserError(f'{file_path} is corrupt (not JSON: {e})') from e
  if not isinstance(value, dict):
    raise UserError(f'{file_path} is corrupt (not a JSON object)')
  return value


def read(dataset_dir: str) -> dict:
  """The manifest of a complete prepared dataset, its shards checked present, of full size and
  holding the records and tokens it says."""
  m = read_json(path(dataset_dir))
  if m is None:
    raise UserError(f'no prepared dataset in {dataset_dir}: {FILE} is missing (a prepare that did not '
                    f'finish leaves none; run python -m tokenformer_jax.prepare --prepared={dataset_dir})')
  missing = [k for k in _REQUIRED if k not in m] + [f'tokenizer.{k}' for k in _REQUIRED_TOKENIZER
                                                    if k not in m.get('tokenizer', {})]
  missing += [f'splits.{s}' for s in SPLITS if s not in m.get('splits', {})]
  if missing:
    raise UserError(f'{path(dataset_dir)} is corrupt (missing {", ".join(missing)})')
  if m['version'] != VERSION:
    raise UserError(f'{path(dataset_dir)} has format version {m["version"]}, this code reads {VERSION}; '
                    f'prepare the dataset again')
  entries = [shard for split in SPLITS for shard in m['splits'][split].get('shards', [])]
  with futures.ThreadPoolExecutor(_CHECK_THREADS) as pool:  # remote shards: a round trip or two each
    list(pool.map(lambda shard: _check_complete(dataset_dir, shard, m), entries))
  return m


def _check_complete(dataset_dir: str, shard: dict, m: dict) -> None:
  check_shard(dataset_dir, shard)
  shards.check_counts(os.path.join(dataset_dir, shard['file']), shard, m['dtype'], m['record_tokens'])


def check_shard(dataset_dir: str, shard: dict) -> None:
  """The shard's file exists with the size the manifest records (a stat, no read)."""
  file_path = os.path.join(dataset_dir, shard['file'])
  try:
    size = sources.size(file_path)
  except Exception as e:  # pylint: disable=broad-exception-caught  (OS or remote filesystem errors)
    raise UserError(f'shard {file_path} is missing; prepare the dataset again') from e
  if size != shard['bytes']:
    raise UserError(f'shard {file_path} is truncated or changed ({size} bytes, the manifest says '
                    f'{shard["bytes"]}); prepare the dataset again')
