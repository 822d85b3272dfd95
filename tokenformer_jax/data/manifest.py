"""A prepared dataset's manifest: `DIR/manifest.json`, written last, so its presence means complete.

It records the shards of each split (train, validation) with their token, document, record and byte
counts, the token dtype and record size, the tokenizer (its file in DIR, kind, sha256, vocabulary size,
end-of-text id) and what was prepared from (the inputs' fingerprint and the options). Opening a dataset
reads this file and stats the shards; no token is read before training starts.
"""
import json
import os
import tempfile

from tokenformer_jax.data import sources
from tokenformer_jax.errors import UserError

FILE = 'manifest.json'
VERSION = 1
SPLITS = ('train', 'validation')


def path(dataset_dir: str) -> str:
  return os.path.join(dataset_dir, FILE)


def write_json(file_path: str, value: dict) -> None:
  """Writes through a temp file and a rename (local) or one object upload (remote): all or nothing."""
  data = json.dumps(value, indent=2, sort_keys=True).encode()
  if sources.is_remote(file_path):
    with sources._filesystems().create(file_path) as f:  # pylint: disable=protected-access
      f.write(data)
    return
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(file_path), prefix=f'.{os.path.basename(file_path)}.')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, file_path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_json(file_path: str) -> dict | None:
  """The JSON object at file_path, None if absent; a UserError if it is not valid JSON."""
  try:
    if sources.is_remote(file_path):
      fs = sources._filesystems()  # pylint: disable=protected-access
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
  """The manifest of a complete prepared dataset, its shards checked present and of full size."""
  m = read_json(path(dataset_dir))
  if m is None:
    raise UserError(f'no prepared dataset in {dataset_dir}: {FILE} is missing (a prepare that did not '
                    f'finish leaves none; run python -m tokenformer_jax.prepare --output={dataset_dir})')
  try:
    if m['version'] != VERSION:
      raise UserError(f'{path(dataset_dir)} has format version {m["version"]}, this code reads {VERSION}; '
                      f'prepare the dataset again')
    for split in SPLITS:
      for shard in m['splits'][split]['shards']:
        _check_shard(dataset_dir, shard)
    m['tokenizer']['sha256'], m['tokenizer']['file'], m['dtype'], m['record_tokens']  # pylint: disable=pointless-statement
  except (KeyError, TypeError) as e:
    raise UserError(f'{path(dataset_dir)} is corrupt (missing {e})') from e
  return m


def _check_shard(dataset_dir: str, shard: dict) -> None:
  file_path = os.path.join(dataset_dir, shard['file'])
  try:
    size = sources.size(file_path)
  except Exception as e:  # pylint: disable=broad-exception-caught  (OS or remote filesystem errors)
    raise UserError(f'shard {file_path} is missing; prepare the dataset again') from e
  if size != shard['bytes']:
    raise UserError(f'shard {file_path} is truncated or changed ({size} bytes, the manifest says '
                    f'{shard["bytes"]}); prepare the dataset again')
