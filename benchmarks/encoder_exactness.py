"""Does the faster encoder give a tokenizer.json's own ids? A check for any byte-level BPE file.

  python benchmarks/encoder_exactness.py --tokenizer=tokenizer.json [--strings=30000] [--documents=N]
      [--json=FILE]

Compares `tokenformer_jax.data.fast_encoder.FastEncoder` with the Hugging Face tokenizer built from the
same file on two sets of text, and counts the texts each way: the same ids, different ids (a bug), or
left to the Hugging Face tokenizer (holding a special token's text or a character whose normalization
the two may disagree on; such texts are encoded by the Hugging Face tokenizer when preparing):
- random strings: spaces, newlines, tabs, ASCII letters, digits and punctuation, mixed with characters
  drawn from every character Python knows outside ASCII and, more often, combining marks;
- text on this machine: the bundled KJV books and every UTF-8 `.txt`, `.rst` and `.md` file under the
  installed Python packages and /usr/share/doc, one document per file;
- the BPE merges alone, where tiktoken and the file's merge list could part: every pair of tokens x, y
  whose bytes join into a token that another merge makes (tiktoken would join them, the file would
  not), alone and between random tokens, as one piece each (tiktoken with a pattern that makes the whole
  text one piece, against the file's model); pairs whose bytes are not UTF-8 are skipped.
The file's shape is checked first: a file the encoder does not reproduce says why and stops here.
"""
import glob
import json
import random
import sys
import sysconfig
import time
import unicodedata

from absl import app, flags

_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'A byte-level BPE tokenizer.json.')
_STRINGS = flags.DEFINE_integer('strings', 30000, 'Random strings to compare.')
_DOCUMENTS = flags.DEFINE_integer('documents', 0, 'At most this many local documents (0: all).')
_JSON = flags.DEFINE_string('json', None, 'Write the counts here.')
_ASCII = list(" \n\t  \r\x0b'sdtmlrvea1234567890.,;:!?-_()[]{}<>|#\"\\/")


def random_strings(count: int, seed: int = 0) -> list[str]:
  known = [c for c in range(0x80, sys.maxunicode + 1)
           if not 0xD800 <= c < 0xE000 and unicodedata.category(chr(c)) != 'Cn']
  marks = [c for c in known if unicodedata.combining(chr(c))]
  rng = random.Random(seed)

  def char():
    if rng.random() < 0.5:
      return rng.choice(_ASCII)
    return chr(rng.choice(marks if rng.random() < 0.2 else known))

  return [''.join(char() for _ in range(rng.randrange(1, 120))) for _ in range(count)]


def local_documents() -> list[str]:
  from tokenformer_jax.data import sources  # pylint: disable=import-outside-toplevel
  site = sysconfig.get_paths()['purelib']
  files = sorted({f for pattern in ('**/*.txt', '**/*.rst', '**/*.md')
                  for root in (site, '/usr/share/doc') for f in glob.glob(f'{root}/{pattern}', recursive=True)})
  docs = list(sources.kjv_documents())
  for path in files:
    try:
      with open(path, encoding='utf-8') as f:
        docs.append(f.read())
    except (OSError, UnicodeDecodeError):
      continue
  docs = [d for d in docs if d.strip()]
  return docs[:_DOCUMENTS.value] if _DOCUMENTS.value else docs


def merge_pairs(config: dict, hf, seed: int = 0) -> dict:
  """Counts of the pair texts (see above) on which tiktoken's BPE and the file's model agree."""
  import tiktoken  # pylint: disable=import-outside-toplevel
  from tokenformer_jax.data import fast_encoder  # pylint: disable=import-outside-toplevel
  model = config['model']
  added = {t['id'] for t in config.get('added_tokens', [])}
  vocab = {t: i for t, i in model['vocab'].items() if i not in added}
  alphabet = fast_encoder.byte_alphabet()
  ranks = {bytes(alphabet[c] for c in t): i for t, i in vocab.items()}
  one_piece = tiktoken.Encoding('one piece', pat_str=r'[\s\S]+', mergeable_ranks=ranks, special_tokens={})
  made = {}
  for merge in model['merges']:
    left, right = merge.split(' ') if isinstance(merge, str) else merge
    made[left + right] = (left, right)
  pairs = [(token[:k], token[k:]) for token, merge in made.items() for k in range(1, len(token))
           if (token[:k], token[k:]) != merge and token[:k] in vocab and token[k:] in vocab]
  rng, tokens = random.Random(seed), sorted(vocab)
  counts = {'pairs': len(pairs), 'texts': 0, 'same': 0, 'different': 0, 'not UTF-8': 0, 'first different': None}
  for x, y in pairs:
    left, right = rng.choice(tokens), rng.choice(tokens)
    for piece in (x + y, left + x + y, x + y + right, left + x + y + right):
      try:
        text = bytes(alphabet[c] for c in piece).decode('utf-8')
      except UnicodeDecodeError:
        counts['not UTF-8'] += 1
        continue
      counts['texts'] += 1
      if one_piece.encode_ordinary(text) == [t.id for t in hf.model.tokenize(piece)]:
        counts['same'] += 1
      else:
        counts['different'] += 1
        counts['first different'] = counts['first different'] or ascii(text)
  return counts


def compare(fast, hf, texts: list[str]) -> dict:
  counts = {'texts': len(texts), 'same': 0, 'different': 0, 'left to the tokenizer': 0, 'tokens': 0,
            'non-ASCII texts': sum(not t.isascii() for t in texts), 'first different': None}
  for text in texts:
    got = fast.encode(text)
    if got is None:
      counts['left to the tokenizer'] += 1
      continue
    want = hf.encode(text, add_special_tokens=False).ids
    counts['tokens'] += len(want)
    if got.tolist() == want:
      counts['same'] += 1
    else:
      counts['different'] += 1
      counts['first different'] = counts['first different'] or ascii(text[:200])
  return counts


def main(_):
  import tokenizers  # pylint: disable=import-outside-toplevel
  from tokenformer_jax.data import fast_encoder  # pylint: disable=import-outside-toplevel
  with open(_TOKENIZER.value, encoding='utf-8') as f:
    config = json.load(f)
  hf = tokenizers.Tokenizer.from_str(json.dumps(config))
  try:
    fast = fast_encoder.FastEncoder(hf, config)
  except fast_encoder.Unsupported as e:
    raise SystemExit(f'no faster encoder for this file: {e}') from e
  result = {'tokenizer': _TOKENIZER.value}
  for name, texts in (('random strings', random_strings(_STRINGS.value)), ('local documents', local_documents())):
    start = time.perf_counter()
    result[name] = compare(fast, hf, texts)
    c = result[name]
    print(f'{name}: {c["texts"]:,} ({c["non-ASCII texts"]:,} not ASCII, {c["tokens"]:,} tokens compared): '
          f'{c["same"]:,} the same, {c["different"]:,} different, {c["left to the tokenizer"]:,} left to the '
          f'Hugging Face tokenizer ({time.perf_counter() - start:.1f} s)')
  start = time.perf_counter()
  c = result['merge pairs'] = merge_pairs(config, hf)
  print(f'merge pairs: {c["pairs"]:,} pairs, {c["texts"]:,} texts as one piece each: {c["same"]:,} the same, '
        f'{c["different"]:,} different ({c["not UTF-8"]:,} not UTF-8, skipped; '
        f'{time.perf_counter() - start:.1f} s)')
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2)
  if any(result[n]['different'] for n in ('random strings', 'local documents', 'merge pairs')):
    raise SystemExit('the faster encoder gave different ids')


if __name__ == '__main__':
  flags.mark_flags_as_required(['tokenizer'])
  app.run(main)
