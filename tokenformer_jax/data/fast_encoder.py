"""A faster encoder for byte-level BPE `tokenizer.json` files (GPT-2, GPT-NeoX-20B), with the same ids.

Preparing a corpus is bound by its tokenizer. The Hugging Face tokenizer spends most of its time in
general machinery (normalized-string splitting, allocation, building `Encoding` objects), not in the BPE
merges. tiktoken's encoder runs the same two steps, a regex that cuts pieces and BPE within each piece,
in about a quarter of the CPU time (docs/data.md). This module builds a tiktoken encoding from a
`tokenizer.json`, used only where it gives the Hugging Face ids exactly. That is decided per file, once:

- **The file's shape**: a BPE model without dropout, unknown token, affixes, byte fallback or
  ignore_merges; the ByteLevel pre-tokenizer with its GPT-2 pattern and no prefix space; no normalizer,
  or only Unicode normal forms; added tokens that are special, or runs of spaces of every length from 2
  up (GPT-NeoX-20B's).
- **Runs of spaces.** The Hugging Face tokenizer takes added tokens out of the text before its pattern
  runs, longest first from the left. The pattern below gives the same pieces in one pass: a piece of 2
  to N spaces, and whitespace pieces that never hold two spaces in a row.
- **The merges.** tiktoken merges the adjacent pair whose merged bytes have the lowest rank; the merge
  list ranks pairs. With ids as ranks both order the merges alike when every multi-byte token is made
  by exactly one merge, in id order (checked). tiktoken also takes a whole piece that is a token as
  that token, so each token, encoded alone by the file's model, must be itself (checked for every
  token: 0.1 s for 50k). One difference is left that no check here rules out: two adjacent tokens that
  join into a token made by another merge are joined by tiktoken and not by the merge list. Encoding
  every such pair of GPT-NeoX-20B's, alone and between random tokens, found none
  (benchmarks/encoder_exactness.py).

And per document:
- **A document holding a special token's text** (`<|endoftext|>`) is encoded by the Hugging Face
  tokenizer, which reads that text as the token.
- **Unicode.** The normal forms are computed by Python's `unicodedata`, whose tables can be newer than
  the tokenizer's (Python 3.11: Unicode 14; the tokenizer's NFC composes nothing added after Unicode 12).
  A document with a character whose normalization the two disagree on, found by probing the tokenizer's
  normalizer with every character that has a decomposition or a combining class, or a character that
  Python does not know, is encoded by the Hugging Face tokenizer. The pattern's letter, number and
  space classes agree between the two regex engines on every code point (tests/data/fast_encoder_test.py).
"""
import functools
import json
import sys
import threading
import unicodedata

import numpy as np

_FORMS = ('NFC', 'NFD', 'NFKC', 'NFKD')
_MODEL_DEFAULTS = {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
                   'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False,
                   'ignore_merges': False}
# The ByteLevel pre-tokenizer's pattern, without its whitespace alternatives.
_GPT2_PIECES = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
# A whitespace character that does not start a run of two spaces: a run of spaces is a piece of its own.
_NOT_A_SPACE_RUN = r"(?:[^\S ]| (?! ))"
# Combining marks of the lowest and highest classes (1 and 240)
_LOW_MARK, _HIGH_MARK = '\u0334', '\u0345'
# unsafe_characters looks at code points in blocks of this many
_BLOCK = 64
# Bytes that occur in UTF-8 text: all but C0, C1 and F5..FF.
_UTF8_BYTES = [b for b in range(256) if b not in (0xC0, 0xC1) and b < 0xF5]


class Unsupported(ValueError):
  """The file is outside what this encoder reproduces exactly; the reason says what."""


@functools.cache
def byte_alphabet() -> dict[str, int]:
  """The byte-level alphabet: the printable character standing for each byte (GPT-2's mapping).

  Printable Latin-1 characters stand for themselves; the other bytes, in order, for U+0100 onwards."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
  others = [b for b in range(256) if b not in printable]
  chars = {chr(b): b for b in printable}
  chars.update({chr(256 + i): b for i, b in enumerate(others)})
  return chars


class FastEncoder:
  """encode(text) -> uint32 ids, or None where the Hugging Face tokenizer must encode the document."""

  def __init__(self, hf, config: dict):
    """hf: the `tokenizers.Tokenizer` built from `config` (the parsed tokenizer.json).
    Raises Unsupported when the two could give different ids."""
    import tiktoken  # pylint: disable=import-outside-toplevel
    self._forms = _normal_forms(config.get('normalizer'))
    _check_pre_tokenizer(config.get('pre_tokenizer'))
    model = config.get('model') or {}
    for key, default in _MODEL_DEFAULTS.items():
      value = model.get(key, default)
      if value != default and not (value == '' and key.endswith(('prefix', 'suffix'))):
        raise Unsupported(f'model {key} is {value!r}')
    added = config.get('added_tokens') or []
    added_ids = {t['id'] for t in added}
    self._specials = sorted({t['content'] for t in added if t.get('special')})
    runs = _space_runs([t for t in added if not t.get('special')], bool(self._forms))
    ranks = _ranks(model, added_ids)
    _check_merges(model, ranks, hf)
    self._remap = None
    if runs:  # a run's piece is looked up as its byte-level token; its id is the added token's
      remap = np.arange(max(ranks.values()) + 1, dtype=np.uint32)
      for content, token_id in runs.items():
        if content.encode() not in ranks:
          raise Unsupported(f'the added token of {len(content)} spaces is not also a byte-level token')
        remap[ranks[content.encode()]] = token_id
      self._remap = remap
    longest = max(map(len, runs), default=0)
    spaces = (rf"| {{2,{longest}}}|{_NOT_A_SPACE_RUN}+(?!\S)|{_NOT_A_SPACE_RUN}+" if runs
              else r"|\s+(?!\S)|\s+")
    specials = {t['content']: t['id'] for t in added if t.get('special')}
    self._new = functools.partial(tiktoken.Encoding, 'tokenformer_jax', pat_str=_GPT2_PIECES + spaces,
                                  mergeable_ranks=ranks, special_tokens=specials)
    # A tiktoken encoder per thread: threads sharing one contend for its regex's scratch space (two Beam
    # worker threads on one encoder took 1.25x the CPU seconds), and so do threads taking turns on one.
    self._per_thread = threading.local()
    # Built here, so that a pattern tiktoken refuses fails here; it goes to the first thread that encodes
    # (a Beam worker thread: the driver's thread may never encode).
    self._spare = [self._new()]
    self._unsafe = None  # unsafe_characters' table, built (0.09 s) by the first non-ASCII text
    self._unsafe_lock = threading.Lock()

  def encode(self, text: str) -> np.ndarray | None:
    """The ids of `text` (without end-of-text), or None when it must go to the Hugging Face tokenizer.

    Runs outside Python's lock, so threads encode in parallel."""
    if self._specials and any(s in text for s in self._specials):
      return None
    if not text.isascii() and self._forms:
      if self._unsafe_table()[np.frombuffer(text.encode('utf-32-le'), '<u4')].any():
        return None
      for form in self._forms:
        text = unicodedata.normalize(form, text)
      # a special token is matched before normalization or after it (its `normalized` flag)
      if self._specials and any(s in text for s in self._specials):
        return None
    ids = self._ids(text)
    return ids if self._remap is None else self._remap[ids]

  def _unsafe_table(self) -> np.ndarray:
    if self._unsafe is None:
      with self._unsafe_lock:  # built once, however many threads meet non-ASCII text together
        if self._unsafe is None:
          self._unsafe = unsafe_characters(self._forms)
    return self._unsafe

  def _ids(self, text: str) -> np.ndarray:
    """tiktoken's ids, from this thread's encoder (the spare, or built on the thread's first call:
    ~0.04 s)."""
    encoder = getattr(self._per_thread, 'encoder', None)
    if encoder is None:
      try:
        encoder = self._spare.pop()  # atomic: one thread gets it
      except IndexError:
        encoder = self._new()
      self._per_thread.encoder = encoder
    return encoder.encode_to_numpy(text, allowed_special=set(), disallowed_special=())


def _normal_forms(normalizer) -> tuple[str, ...]:
  if normalizer is None:
    return ()
  steps = normalizer.get('normalizers') if normalizer.get('type') == 'Sequence' else [normalizer]
  forms = tuple(step.get('type') for step in steps or [])
  if not all(f in _FORMS for f in forms):
    raise Unsupported(f'normalizer {json.dumps(normalizer)[:100]} is not only Unicode normal forms')
  return forms


def _check_pre_tokenizer(pre) -> None:
  if not (pre and pre.get('type') == 'ByteLevel' and not pre.get('add_prefix_space')
          and pre.get('use_regex', True)):
    raise Unsupported(f'pre-tokenizer {json.dumps(pre)[:100]} is not ByteLevel with its pattern and '
                      'no prefix space')


def _space_runs(added: list[dict], normalized_text: bool) -> dict[str, int]:
  """The non-special added tokens, which must be runs of 2..N spaces: content -> id."""
  runs = {}
  for t in added:
    content = t['content']
    if len(content) < 2 or content.strip(' ') or t.get('lstrip') or t.get('rstrip') or t.get('single_word'):
      raise Unsupported(f'added token {content!r} is not a plain run of spaces')
    if normalized_text and not t.get('normalized', True):  # NFKC makes spaces of other characters
      raise Unsupported(f'added token {content!r} is matched before normalization')
    runs[content] = t['id']
  if runs and sorted(map(len, runs)) != list(range(2, 2 + len(runs))):
    raise Unsupported('the added runs of spaces do not cover every length from 2 up')
  return runs


def _ranks(model: dict, added_ids: set[int]) -> dict[bytes, int]:
  alphabet = byte_alphabet()
  vocab = {token: token_id for token, token_id in model.get('vocab', {}).items() if token_id not in added_ids}
  foreign = set(''.join(vocab)) - alphabet.keys()
  if foreign:
    raise Unsupported(f'vocabulary tokens hold {sorted(foreign)[0]!r}, which is not byte-level')
  to_bytes = str.maketrans({c: chr(b) for c, b in alphabet.items()})
  ranks = {token.translate(to_bytes).encode('latin-1'): token_id for token, token_id in vocab.items()}
  missing = [b for b in _UTF8_BYTES if bytes([b]) not in ranks]
  if missing:
    raise Unsupported(f'{len(missing)} bytes of UTF-8 text have no token (e.g. {missing[0]:#x})')
  return ranks


def _check_merges(model: dict, ranks: dict[bytes, int], hf) -> None:
  """Every multi-byte token is made by exactly one merge, ids rising with the merges; each token,
  encoded alone by the model, is itself."""
  vocab = model.get('vocab', {})
  last, made = -1, {}
  for merge in model.get('merges', []):
    left, right = merge.split(' ') if isinstance(merge, str) else merge
    token_id = vocab.get(left + right)
    if token_id is None or token_id <= last:
      raise Unsupported(f'merge {left!r} + {right!r} does not make the next token in id order')
    last = token_id
    made[token_id] = left + right
  multi_byte = {token_id for token, token_id in ranks.items() if len(token) > 1}
  if made.keys() != multi_byte:
    raise Unsupported(f'{len(multi_byte - made.keys())} multi-byte tokens are made by no merge')
  # The model alone (no normalizer, pre-tokenizer or added tokens) on every token, each a word of its
  # own, in a few batches: all cores, outside Python's lock (a call per token took 1.5 times as long).
  import tokenizers  # pylint: disable=import-outside-toplevel
  tokens, want = list(made.values()), np.fromiter(made.keys(), np.int64, len(made))
  step = -(-len(tokens) // 16) or 1
  encodings = tokenizers.Tokenizer(hf.model).encode_batch_fast(
      [tokens[i:i + step] for i in range(0, len(tokens), step)], is_pretokenized=True,
      add_special_tokens=False)
  got = np.concatenate([np.asarray(e.ids, np.int64) for e in encodings] or [np.zeros(0, np.int64)])
  if len(got) != len(want) or (got != want).any():  # a token that its merges do not make: name it
    bpe = hf.model
    for token_id, token in made.items():
      pieces = bpe.tokenize(token)
      if len(pieces) != 1 or pieces[0].id != token_id:
        raise Unsupported(f'token {token!r} alone encodes to {[t.id for t in pieces]}')


@functools.cache
def unsafe_characters(forms: tuple[str, ...]) -> np.ndarray:
  """A table over all code points: True where Python's normalization may differ from the tokenizer's.

  Those are the characters Python does not know, and those where the two disagree on a probe: the
  character alone, after a letter, between a letter and marks of the lowest and highest combining
  class, and the characters it decomposes to (all of which are then unsafe). Outside planes 0-3 and
  14 no character has a decomposition or a combining class: planes 4-13 are unassigned (and unsafe),
  planes 15-16 private use.

  Built by the first worker that meets non-ASCII text while the others wait, so it is built a block of
  code points at a time (0.09 s, against 0.13 s a character at a time): Python's string methods pass over
  the blocks with nothing to look at, and the probes of a block go to each normalizer in one string."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  theirs = tokenizers.normalizers.Sequence([getattr(tokenizers.normalizers, f)() for f in forms])

  def ours(text):
    for form in forms:
      text = unicodedata.normalize(form, text)
    return text

  unsafe = np.zeros(sys.maxunicode + 1, bool)
  unsafe[0x40000:0xE0000] = True  # planes 4-13: unassigned (so far)
  unsafe[[0xFFFFE, 0xFFFFF, 0x10FFFE, 0x10FFFF]] = True  # the noncharacters of planes 15-16
  marked = []
  for low, high in ((0x80, 0x40000), (0xE0000, 0xF0000)):
    text = np.arange(low, high, dtype='<u4').tobytes().decode('utf-32-le', 'surrogatepass')
    for start in range(0, len(text), _BLOCK):
      block, first = text[start:start + _BLOCK], low + start
      if not block.isprintable():  # an unassigned character (category Cn) is not printable
        categories = map(unicodedata.category, block)
        marked += [first + i for i, category in enumerate(categories) if category == 'Cn']
      # With the highest-class mark before each character and the lowest-class one after it, NFKD
      # leaves the block as it is only when no character has a decomposition or a combining class.
      if not unicodedata.is_normalized('NFKD', _HIGH_MARK + (_LOW_MARK + _HIGH_MARK).join(block) + _LOW_MARK):
        marked += _disagreeing(block, first, ours, theirs.normalize_str)
  unsafe[marked] = True
  return unsafe


def _disagreeing(block: str, first: int, ours, theirs) -> list[int]:
  """The code points that the probes of the block's characters with a decomposition or a combining
  class find unsafe. A newline between probes keeps them apart (it composes with nothing and has
  combining class 0), so all of a block's probes go to each normalizer as one string first."""
  probes = {}
  for i, char in enumerate(block):
    decomposition = unicodedata.decomposition(char)
    if decomposition or unicodedata.combining(char):
      parts = [int(p, 16) for p in decomposition.split() if not p.startswith('<')]
      probes[first + i] = (parts, [char, 'a' + char, ''.join(map(chr, parts)), 'a' + char + _LOW_MARK,
                                   'a' + _HIGH_MARK + char])
  joined = '\n'.join(t for _, texts in probes.values() for t in texts)
  if ours(joined) == theirs(joined):
    return []
  found = []
  for code, (parts, texts) in probes.items():
    if any(ours(t) != theirs(t) for t in texts):
      found += [code, *parts]
  return found
