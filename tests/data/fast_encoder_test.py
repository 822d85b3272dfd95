"""The faster encoder gives the Hugging Face tokenizer's ids, or leaves a document to it; files it cannot
reproduce are refused with the reason."""
import copy
import json
import random
import sys
import threading
import unicodedata

import numpy as np
import pytest
import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, trainers

from tests.helpers import write_hf_tokenizer
from tokenformer_jax.data import fast_encoder
from tokenformer_jax.data import sources
from tokenformer_jax.data import tokenizer as tokenizer_lib

_RUNS = range(2, 25)  # GPT-NeoX-20B's added tokens: runs of 2 to 24 spaces


def _code_like_lines():
  lines = []
  for depth in range(0, 13):
    lines += [' ' * (2 * depth) + f'if value_{depth} != other[{depth}]:  # it\'s {depth}'] * 3
    lines += [' ' * (2 * depth + 1) + f'return {depth} * 7 - x'] * 2
  for n in _RUNS:  # lines of spaces only, so that every run of 2..24 spaces is a learned token too
    lines += [' ' * n] * 100
  return lines


@pytest.fixture(scope='module')
def neox_like(tmp_path_factory):
  """A byte-level BPE shaped as GPT-NeoX-20B's: NFC, specials first, runs of spaces added as tokens."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=['<|endoftext|>', '<|padding|>'],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  books = sources.kjv_documents()[:6]
  tok.train_from_iterator([*books, 'Café naïve façade — “quoted” 中文 日本語 😀 ﬁ', *_code_like_lines()], trainer)
  tok.add_tokens([AddedToken(' ' * n, normalized=True) for n in reversed(_RUNS)])
  path = tmp_path_factory.mktemp('neox') / 'tokenizer.json'
  tok.save(str(path))
  return str(path)


def _pair(path):
  hf = tokenizers.Tokenizer.from_file(path)
  return hf, fast_encoder.FastEncoder(hf, json.load(open(path, encoding='utf-8')))


def _hf_ids(hf, text):
  return hf.encode(text, add_special_tokens=False).ids


DOCUMENTS = [
    'def f(x):\n    return x  # two spaces\n\n\n        deeper\n' + ' ' * 60 + 'far\n\t  tab then spaces',
    ''.join(map(chr, range(128))) * 2,
    ' x  y   z' + ''.join(' ' * n + str(n) for n in range(1, 75)) + '   ',
    " it's they're I've we'll he'd I'm 'S  's\n\n \n  \n   \n\t\n \t \t\n\r\n\x0b\x0c  \x0b",
    'Café, cafe\u0301, Å (\u212b), ﬁ, Ǆ, 한국어 (\u1112\u1161\u11ab), 中文 日本語, 😀👍🏽, \u0627\u0644\u0639\u0631\u0628\u064a\u0629',
    'a\u0301\u0316b q\u0307\u0323 \u1e0b\u0323 \u00a0\u2003nbsp\u3000wide  ',
    '12345 3.14 ٣٤٥ ½ Ⅻ x²',
]


@pytest.mark.parametrize('which', ['neox_like', 'gpt2_like'])
def test_same_ids_as_the_tokenizer(which, neox_like, tmp_path):
  path = neox_like if which == 'neox_like' else write_hf_tokenizer(tmp_path / 'tokenizer.json')
  hf, fast = _pair(path)
  for doc in [*DOCUMENTS, *sources.kjv_documents()[:2]]:
    got = fast.encode(doc)
    assert got is not None and got.tolist() == _hf_ids(hf, doc), doc[:40]


def test_each_thread_encodes_with_its_own_encoder(neox_like):
  """Threads sharing a tiktoken encoder contend for its scratch space, so each gets its own: the one
  built with the FastEncoder goes to one thread, the others build theirs; all give the same ids."""
  hf, fast = _pair(neox_like)
  built, start, found = fast._spare[0], threading.Barrier(3), {}

  def encode_all(k):
    start.wait()
    ids = [fast.encode(doc).tolist() for doc in DOCUMENTS]
    found[k] = (fast._per_thread.encoder, ids)

  threads = [threading.Thread(target=encode_all, args=(k,)) for k in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  encoders = [encoder for encoder, _ in found.values()]
  assert len({id(e) for e in encoders}) == 3 and sum(e is built for e in encoders) == 1
  assert all(ids == [_hf_ids(hf, doc) for doc in DOCUMENTS] for _, ids in found.values())


def test_random_text_same_ids(neox_like):
  hf, fast = _pair(neox_like)
  rng = random.Random(0)
  alphabet = list(" \n\t\r\x0b\x0c'sdtmlrvea1234567890.,;:!?-_()[]{}<>|#\"\\/") + list('éüßΩжنא中😀\u0301\u00a0\u2028')
  texts = [''.join(rng.choices(alphabet, weights=[20, 5, 2] + [1] * (len(alphabet) - 3), k=rng.randrange(200)))
           for _ in range(3000)]
  for text in texts:
    got = fast.encode(text)
    assert got is not None and got.tolist() == _hf_ids(hf, text), repr(text)


def test_random_token_sequences_same_ids(neox_like):
  """Texts made of random tokens: BPE merges in every order the vocabulary allows."""
  hf, fast = _pair(neox_like)
  vocab = sorted(t for t, i in hf.get_vocab(with_added_tokens=False).items() if i > 1)
  unsafe = fast_encoder.unsafe_characters(('NFC',))
  to_byte = fast_encoder.byte_alphabet()
  rng = random.Random(1)
  checked = 0
  for _ in range(4000):
    raw = b''.join(bytes(to_byte[c] for c in rng.choice(vocab)) for _ in range(rng.randint(1, 8)))
    try:
      text = raw.decode('utf-8')
    except UnicodeDecodeError:
      continue
    got = fast.encode(text)
    if got is None:  # left to the tokenizer: a character Python does not know (a byte pair of one)
      assert any(unsafe[ord(c)] for c in text), repr(text)
      continue
    assert got.tolist() == _hf_ids(hf, text), repr(text)
    checked += 1
  assert checked > 2000


def _unsafe_one_at_a_time(forms):
  """The unsafe-character table as its docstring reads, a character at a time (the block-wise build
  passes over blocks and joins probes; both must mark the same code points)."""
  theirs = normalizers.Sequence([getattr(normalizers, f)() for f in forms])

  def ours(text):
    for form in forms:
      text = unicodedata.normalize(form, text)
    return text

  unsafe = np.zeros(sys.maxunicode + 1, bool)
  unsafe[0x40000:0xE0000] = True
  unsafe[[0xFFFFE, 0xFFFFF, 0x10FFFE, 0x10FFFF]] = True
  for code in [*range(0x80, 0x40000), *range(0xE0000, 0xF0000)]:
    char = chr(code)
    decomposition = unicodedata.decomposition(char)
    if not (decomposition or unicodedata.combining(char)):
      unsafe[code] |= unicodedata.category(char) == 'Cn'
      continue
    parts = [int(p, 16) for p in decomposition.split() if not p.startswith('<')]
    probes = [char, 'a' + char, ''.join(map(chr, parts)), 'a' + char + '\u0334', 'a' + '\u0345' + char]
    if any(ours(t) != theirs.normalize_str(t) for t in probes):
      unsafe[[code, *parts]] = True
  return unsafe


@pytest.mark.parametrize('forms', [('NFC',), ('NFKC',), ('NFD', 'NFKD')])
def test_unsafe_table_built_by_blocks_is_the_one_character_at_a_time(forms):
  table = fast_encoder.unsafe_characters(forms)
  want = _unsafe_one_at_a_time(forms)
  assert want.sum() > 800_000 and (table == want).all(), np.flatnonzero(table != want)[:10]


def test_special_token_text_and_unsafe_characters_go_to_the_tokenizer(neox_like):
  hf, fast = _pair(neox_like)
  assert fast.encode('before <|endoftext|> after') is None
  assert fast.encode('<|endoftext|>\u0338 composes to ≯ in NFC') is None
  assert fast.encode('<|endoftext|\uff1e in NFKC only') is not None  # NFC keeps the fullwidth >
  assert fast.encode('no special <|endoftext| here').tolist() == _hf_ids(hf, 'no special <|endoftext| here')
  # a pair that Unicode 13 composes: left to the tokenizer when its tables are older than Python's
  dives_akuru = 'x \U00011935\U00011930 y'
  disagree = hf.normalizer.normalize_str(dives_akuru) != unicodedata.normalize('NFC', dives_akuru)
  assert (fast.encode(dives_akuru) is None) == disagree
  assert fast.encode('\U000e0080 unassigned') is None
  tok = tokenizer_lib.load_file(neox_like)
  docs = ['before <|endoftext|> after', '<|endoftext|>\u0338 x', dives_akuru, *DOCUMENTS]
  for parallel in (True, False):
    got = tok.encode_documents(docs, parallel)
    assert [d.tolist() for d in got] == [_hf_ids(hf, d) + [tok.eos_id] for d in docs]
    assert all(d.dtype == np.int64 for d in got)
  assert tok.encoder.startswith('tiktoken')


@pytest.mark.slow
def test_every_code_point_in_the_same_class(neox_like):
  """Letter, number, space or other: the two regex engines agree on every code point that is not left to
  the tokenizer, each between a letter and a digit, normalized as the tokenizer would."""
  hf, fast = _pair(neox_like)
  unsafe = fast_encoder.unsafe_characters(('NFC',))
  codes = [c for c in range(0x80, sys.maxunicode + 1) if not 0xD800 <= c < 0xE000 and not unsafe[c]]
  assert len(codes) > 250_000
  for start in range(0, len(codes), 8192):
    text = ''.join(f'x{chr(c)}1\n' for c in codes[start:start + 8192])
    assert fast.encode(text).tolist() == _hf_ids(hf, text), hex(codes[start])


def _edit(path, change):
  config = json.load(open(path, encoding='utf-8'))
  change(config)
  return config


def _swap_first_merges(c):
  merges = c['model']['merges']
  merges[0], merges[1] = merges[1], merges[0]


def _add_unreachable_token(c):
  """Merges X+Y, then Y+Z (X, Y, Z single characters), then a new one X+YZ: in X Y Z the first merge
  takes X+Y, so the model never makes XYZ, which tiktoken takes whole."""
  vocab, merges = c['model']['vocab'], c['model']['merges']
  pairs = [m.split(' ') if isinstance(m, str) else m for m in merges]
  for i, (x, y) in enumerate(pairs):
    for y2, z in pairs[i + 1:]:
      if len(x) == len(y) == len(z) == 1 and y2 == y and x + y + z not in vocab:
        vocab[x + y + z] = max(max(vocab.values()), *(t['id'] for t in c['added_tokens'])) + 1
        merges.append(f'{x} {y + z}' if isinstance(merges[0], str) else [x, y + z])
        return
  raise AssertionError('no merges X+Y then Y+Z in the test tokenizer')


UNSUPPORTED = {
    'dropout': (lambda c: c['model'].update(dropout=0.1), 'model dropout'),
    'subword prefix': (lambda c: c['model'].update(continuing_subword_prefix='##'), 'continuing_subword_prefix'),
    'ignore merges': (lambda c: c['model'].update(ignore_merges=True), 'ignore_merges'),
    'prefix space': (lambda c: c['pre_tokenizer'].update(add_prefix_space=True), 'pre-tokenizer'),
    'no regex': (lambda c: c['pre_tokenizer'].update(use_regex=False), 'pre-tokenizer'),
    'lowercase': (lambda c: c.update(normalizer={'type': 'Lowercase'}), 'not only Unicode normal forms'),
    'word added': (lambda c: c['added_tokens'][2].update(content='hello'), 'not a plain run of spaces'),
    'lstrip': (lambda c: c['added_tokens'][2].update(lstrip=True), 'not a plain run of spaces'),
    'gap': (lambda c: c['added_tokens'].pop(5), 'every length from 2 up'),
    'merge order': (_swap_first_merges, 'next token in id order'),
    'merge missing': (lambda c: c['model']['merges'].pop(), 'made by no merge'),
    'byte missing': (lambda c: c['model']['vocab'].pop('!'), 'bytes of UTF-8 text have no token'),
    'unreachable token': (_add_unreachable_token, 'alone encodes to'),
}


@pytest.mark.parametrize('name', sorted(UNSUPPORTED))
def test_files_it_cannot_reproduce_are_refused(name, neox_like, tmp_path):
  change, reason = UNSUPPORTED[name]
  config = _edit(neox_like, change)
  path = tmp_path / 'tokenizer.json'
  path.write_text(json.dumps(config), encoding='utf-8')
  hf = tokenizers.Tokenizer.from_file(neox_like)  # the checks that need it come after the file's shape
  with pytest.raises(fast_encoder.Unsupported, match=reason):
    fast_encoder.FastEncoder(hf, copy.deepcopy(config))
  if name in ('dropout', 'subword prefix'):  # random ids; a prefix the merges do not use breaks the file
    return
  hf = tokenizers.Tokenizer.from_file(str(path))
  tok = tokenizer_lib.load_file(str(path))
  assert tok.encoder.startswith('the Hugging Face tokenizer (no faster encoder: ')
  doc = DOCUMENTS[0]
  assert tok.encode_documents([doc])[0].tolist() == hf.encode(doc, add_special_tokens=False).ids + [tok.eos_id]


def test_a_layout_the_encoder_does_not_know_falls_back_to_the_tokenizer(neox_like, monkeypatch):
  def unknown_layout(self, hf, config):
    raise KeyError('merges')
  monkeypatch.setattr(fast_encoder.FastEncoder, '__init__', unknown_layout)
  tok = tokenizer_lib.load_file(neox_like)
  assert tok.encoder == ("the Hugging Face tokenizer (no faster encoder: unexpected tokenizer.json layout "
                         "(KeyError: 'merges'))")
  hf = tokenizers.Tokenizer.from_file(neox_like)
  assert tok.encode_documents([DOCUMENTS[0]])[0].tolist() == _hf_ids(hf, DOCUMENTS[0]) + [tok.eos_id]
