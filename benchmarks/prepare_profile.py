"""Where one prepare worker's time goes: reading and JSON decoding, the tokenizer, the Python around it,
writing. Times one shard (`build.process`) of the given input files in this process, as a Beam worker
runs it, with timers around the functions of each part.

  python benchmarks/prepare_profile.py --input=FILE.jsonl --tokenizer=tokenizer.json [--parallel]

- reading and JSON: drawing each document from `sources.documents` (file reads, JSON decoding, checks);
- tokenizer: the calls into the tokenizer library itself (tiktoken's encoder, the Hugging Face tokenizer
  for the documents left to it, or sentencepiece);
- Python around it: the rest of `encode_documents` (the faster encoder's checks and Unicode
  normalization, ids to arrays, end-of-text, batching);
- writing: `shards.Writer` (records, the ArrayRecord file, the rename);
- other: the rest of `process` (validation hashing, the batch loop, the shard bookkeeping).
Wall and CPU seconds of each, and apart from them the set-up that a process pays once (loading the
tokenizer, building the faster encoder); `--code=CHECKOUT` profiles another checkout's code (e.g. an older one).
"""
import collections
import inspect
import json
import os
import resource
import shutil
import sys
import tempfile
import time

from absl import app, flags

_CODE = flags.DEFINE_string('code', os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'The checkout whose tokenformer_jax is profiled.')
_INPUT = flags.DEFINE_list('input', None, 'Input files (one shard).')
_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'A tokenizer.json or sentencepiece model.')
_PARALLEL = flags.DEFINE_bool('parallel', False, 'Encode on all cores (the in-process path) instead of '
                              'one (a Beam worker).')
_JSON = flags.DEFINE_string('json', None, 'Write the breakdown here.')

_TIMES = collections.defaultdict(lambda: [0.0, 0.0])  # part -> [wall, cpu]


class _Timed:
  def __init__(self, part: str):
    self.part = part

  def __enter__(self):
    self.wall, self.cpu = time.perf_counter(), time.process_time()

  def __exit__(self, *_):
    _TIMES[self.part][0] += time.perf_counter() - self.wall
    _TIMES[self.part][1] += time.process_time() - self.cpu


def _time_calls(fn, part: str):
  def timed(*args, **kwargs):
    with _Timed(part):
      return fn(*args, **kwargs)
  return timed


class _TimedEncoder:
  """Stands in for a tokenizer library object: times its encode calls."""

  def __init__(self, inner):
    self._inner = inner

  def __getattr__(self, name):
    attr = getattr(self._inner, name)
    return _time_calls(attr, 'tokenizer') if name.startswith('encode') else attr


def _instrument(sources, shards, tokenizer) -> None:
  documents = sources.documents

  def timed_documents(*args, **kwargs):
    it = documents(*args, **kwargs)
    while True:
      with _Timed('reading and JSON'):
        doc = next(it, None)
      if doc is None:
        return
      yield doc

  sources.documents = timed_documents
  for name in ('add', 'close'):
    setattr(shards.Writer, name, _time_calls(getattr(shards.Writer, name), 'writing'))
  for name in ('_hf', '_hf_ascii', '_sp'):
    if hasattr(tokenizer, name):
      setattr(tokenizer, name, _TimedEncoder(getattr(tokenizer, name)))
  fast = getattr(tokenizer, '_fast_encoder', lambda: None)()
  if hasattr(fast, '_ids'):  # the faster encoder's call into tiktoken (its checks and normalization are Python)
    fast._ids = _time_calls(fast._ids, 'tokenizer')  # pylint: disable=protected-access
  tokenizer.encode_documents = _time_calls(tokenizer.encode_documents, 'encode_documents')


def main(_):
  sys.path.insert(0, _CODE.value)
  from tokenformer_jax.data import build, shards, sources  # pylint: disable=import-outside-toplevel
  from tokenformer_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  wall, cpu = time.perf_counter(), time.process_time()
  tok = tokenizer_lib.load_file(_TOKENIZER.value)
  if hasattr(tok, '_fast_encoder'):  # built once per process, before the first document
    fast = tok._fast_encoder()  # pylint: disable=protected-access
    if not isinstance(fast, str) and fast._forms:  # pylint: disable=protected-access
      sys.modules[type(fast).__module__].unsafe_characters(fast._forms)  # pylint: disable=protected-access
  setup = [time.perf_counter() - wall, time.process_time() - cpu]
  _instrument(sources, shards, tok)
  out = tempfile.mkdtemp(prefix='prepare_profile_')
  os.makedirs(os.path.join(out, '.prepare'))
  task = build.Task(0, 1, tuple(_INPUT.value), out, 'text', 0.0,
                      shards.dtype_for(tok.vocab_size).str, shards.RECORD_TOKENS, 'profile')
  kwargs = ({'parallel': _PARALLEL.value} if 'parallel' in inspect.signature(build.process).parameters
            else {})
  with _Timed('total'):
    done = build.process(task, tok, **kwargs)
  shutil.rmtree(out)
  parts = {k: _TIMES[k] for k in ('reading and JSON', 'tokenizer', 'writing', 'total')}
  parts['Python around the tokenizer'] = [e - t for e, t in zip(_TIMES['encode_documents'],
                                                                _TIMES['tokenizer'])]
  parts['other'] = [_TIMES['total'][i] - _TIMES['reading and JSON'][i] - _TIMES['encode_documents'][i]
                    - _TIMES['writing'][i] for i in (0, 1)]
  tokens = done['shards']['train']['tokens']
  result = {'code': os.path.dirname(build.__file__), 'inputs': _INPUT.value, 'tokens': tokens,
            'kwargs': kwargs, 'encoder': getattr(tok, 'encoder', None),
            'setup (loading the tokenizer, once per process)': {'wall_s': setup[0], 'cpu_s': setup[1]},
            'peak_rss_MiB': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            'load': os.getloadavg(),
            'parts': {k: {'wall_s': w, 'cpu_s': c, 'cpu_share': c / parts['total'][1]}
                      for k, (w, c) in parts.items()}}
  print(f'{tokens:,} tokens; {tokens / parts["total"][0] / 1e6:.3f}M tokens/s, '
        f'{tokens / parts["total"][1] / 1e6:.3f}M tokens per CPU second; peak RSS '
        f'{result["peak_rss_MiB"]:.0f} MiB; load {result["load"][0]:.1f}')
  print(f'  set-up, once per process: {setup[0]:.2f} s wall, {setup[1]:.2f} s CPU ({result["encoder"]})')
  for k, v in result['parts'].items():
    print(f'  {k:28s} {v["wall_s"]:7.2f} s wall {v["cpu_s"]:7.2f} s CPU '
          f'({100 * v["cpu_share"]:5.1f}% of CPU)')
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  flags.mark_flags_as_required(['input', 'tokenizer'])
  app.run(main)
