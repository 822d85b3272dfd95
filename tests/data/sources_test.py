"""Input documents in every format, their errors (file and line), and the inputs' fingerprint."""
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tokenformer_jax.data import sources
from tokenformer_jax.errors import UserError

DOCS = ['In the beginning God created the heaven and the earth.', 'And the earth was without form.\nVoid.',
        'Let there be light: and there was light.']


def _jsonl(docs, key='text') -> str:
  return ''.join(json.dumps({key: d, 'meta': {'n': i}}) + '\n' for i, d in enumerate(docs))


def test_kjv_books():
  docs = list(sources.documents(sources.KJV))
  assert len(docs) == 66
  assert docs[0].startswith('# Genesis\n\nIn the beginning God created the heaven and the earth.\n')
  assert docs[1].startswith('# Exodus\n\n')
  assert sum(map(len, docs)) > 4_000_000


def test_every_format_gives_the_same_documents(tmp_path):
  (tmp_path / 'a.jsonl').write_text(_jsonl(DOCS) + '\n')  # a blank line is skipped
  with gzip.open(tmp_path / 'b.jsonl.gz', 'wt') as f:
    f.write(_jsonl(DOCS))
  (tmp_path / 'c.jsonl.zst').write_bytes(zstandard.ZstdCompressor().compress(_jsonl(DOCS).encode()))
  pq.write_table(pa.table({'content': DOCS + [None]}), tmp_path / 'd.parquet')
  for name in ('a.jsonl', 'b.jsonl.gz', 'c.jsonl.zst'):
    assert list(sources.documents(str(tmp_path / name))) == DOCS
  assert list(sources.documents(str(tmp_path / 'd.parquet'), text_key='content')) == DOCS
  (tmp_path / 'e.txt').write_text('one document\r\nof two lines\n\n')
  assert list(sources.documents(str(tmp_path / 'e.txt'))) == ['one document\nof two lines']


def test_every_format_normalises_line_ends_alike(tmp_path):
  saved = ['one document\r\nof two lines\n\n', 'another\n', '\n\nindented\r\n  text\r\n']
  want = ['one document\nof two lines', 'another', '\n\nindented\n  text']
  (tmp_path / 'a.jsonl').write_text(_jsonl(saved))
  pq.write_table(pa.table({'text': saved}), tmp_path / 'b.parquet')
  for k, doc in enumerate(saved):
    (tmp_path / f'c{k}.txt').write_bytes(doc.encode())  # bytes: \r\n kept as saved
  assert list(sources.documents(str(tmp_path / 'a.jsonl'))) == want
  assert list(sources.documents(str(tmp_path / 'b.parquet'))) == want
  assert [d for k in range(3) for d in sources.documents(str(tmp_path / f'c{k}.txt'))] == want


def test_the_bundled_corpus_is_already_normalised():
  """Normalising every format changed no document of the default corpus, so nor its tokens."""
  books = sources.kjv_documents()
  assert all(sources.normalize(book) == book for book in books)
  assert list(sources.documents(sources.KJV)) == books


def test_globs_sorted_and_deduplicated(tmp_path):
  for name in ('b.txt', 'a.txt', 'notes.md'):
    (tmp_path / name).write_text(name)
  got = sources.expand(f'{tmp_path}/b.txt, {tmp_path}/*.txt,{tmp_path}/a.txt')
  assert got == [str(tmp_path / 'a.txt'), str(tmp_path / 'b.txt')]
  assert sources.expand('kjv') == ['kjv']


@pytest.mark.parametrize('content, name, match', [
    ('{"text": "ok"}\nnot json\n', 'x.jsonl', r'x\.jsonl:2: not a JSON object'),
    ('{"text": "ok"}\n{"body": "no text"}\n', 'x.jsonl', r'x\.jsonl:2: no "text" field \(set --text_key\)'),
    ('{"text": 3}\n', 'x.jsonl', r'x\.jsonl:1: field "text" is not a string'),
    (b'{"text": "caf\xe9"}\n', 'x.jsonl', r'x\.jsonl:1: not UTF-8'),
    (b'fine\ncaf\xe9\n', 'x.txt', r'x\.txt:2: not UTF-8'),
    ('{"text": "ok"}\n{"text": "caf\u00e9 \\ud83d"}\n', 'x.jsonl', r'x\.jsonl:2: field "text" holds an unpaired surrogate'),
    (b'\x1f\x8b\x08\x00garbage', 'x.jsonl.gz', r'cannot read input file .*x\.jsonl\.gz'),
    (b'not parquet', 'x.parquet', r'x\.parquet: not a readable Parquet file'),
])
def test_bad_input_names_file_and_line(tmp_path, content, name, match):
  path = tmp_path / name
  if isinstance(content, str):
    path.write_text(content)
  else:
    path.write_bytes(content)
  with pytest.raises(UserError, match=match):
    list(sources.documents(str(path)))


def test_parquet_without_the_column(tmp_path):
  pq.write_table(pa.table({'body': DOCS}), tmp_path / 'd.parquet')
  with pytest.raises(UserError, match=r'no "text" column \(set --text_key\); columns: body'):
    list(sources.documents(str(tmp_path / 'd.parquet')))


@pytest.mark.parametrize('spec, match', [
    ('{d}/*.json', r'matches no files: .*\*\.json'),
    ('{d}/a.txt,{d}/missing.txt', r'not found: .*missing\.txt'),
    ('  ', 'no input given'),
])
def test_bad_patterns(tmp_path, spec, match):
  (tmp_path / 'a.txt').write_text('a')
  with pytest.raises(UserError, match=match):
    sources.expand(spec.format(d=tmp_path))


def test_fingerprint_follows_names_sizes_and_times_without_reading(tmp_path, monkeypatch):
  a = tmp_path / 'a.txt'
  a.write_text('some text\n')
  paths = [str(a)]
  before = sources.fingerprint(paths)
  assert sources.fingerprint(paths) == before
  with open(a, 'a') as f:
    f.write('one more line\n')
  assert sources.fingerprint(paths) != before
  after = sources.fingerprint(paths)

  def no_reading(*args, **kwargs):
    raise AssertionError('the fingerprint opened a file')

  with monkeypatch.context() as m:
    m.setattr('builtins.open', no_reading)
    assert sources.fingerprint(paths) == after
  (tmp_path / 'b.txt').write_text('x')
  assert sources.fingerprint(sources.expand(f'{tmp_path}/*.txt')) != sources.fingerprint(paths)
