"""What a prepare run pays apart from its shards: the fixed part that does not shrink with workers.

  python benchmarks/prepare_start.py --tokenizer=tokenizer.json [--python=venv/bin/python] \
      [--code=CHECKOUT] [--runs=5] [--json=FILE]

On 100 MB a 1-worker run takes ~13 s, so each second of fixed cost takes ~5% off the 2-worker / 1 ratio.
Two measures:
- whole runs of `python -m tokenformer_jax.prepare` (a fresh process each, wall and CPU seconds) on a
  corpus that is nearly nothing (8 files of one short document: 8 shards, as the speed benchmark's
  corpus), at 1 and 2 workers, alternating;
- one traced run at each worker count, cut into phases by timestamps: the interpreter and our imports;
  loading the tokenizer; building the faster encoder; importing Beam (the start of the pipeline module's
  `run` to its first call after the imports); starting the pipeline (to the first shard); the shards;
  ending the pipeline and the process.
--python runs another interpreter (a virtual environment made by the README's commands has only what a
fresh install has); --code measures another checkout (e.g. an older commit, from `git worktree add`).
--corpus runs on a real corpus instead (e.g. prepare_speed.py's, with --runs=0): then --traced=N traced
pairs give the shards' own scaling, the shard phase at 1 worker over that at 2 (median of N), which
tells the fixed start's share of the whole run's scaling from the shards'.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'The tokenizer.json (or sentencepiece model).')
_PYTHON = flags.DEFINE_string('python', sys.executable, 'The Python that runs prepare.')
_CODE = flags.DEFINE_string('code', os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'The checkout whose tokenformer_jax runs.')
_RUNS = flags.DEFINE_integer('runs', 5, 'Whole runs at each worker count.')
_JSON = flags.DEFINE_string('json', None, 'Write the results here.')
_CORPUS = flags.DEFINE_string('corpus', None, 'A corpus (glob) to run on instead of 8 one-line documents.')
_TRACED_PAIRS = flags.DEFINE_integer('traced', 1, 'Traced runs at each worker count, alternating.')

# Runs prepare's main in this process with timestamps around its phases; prints them as JSON lines.
_TRACED = r'''
import json, os, sys, time
T0 = float(os.environ['PREPARE_START_T0'])
EVENTS = os.open(os.environ['PREPARE_START_EVENTS'], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
def mark(event):  # one write of one line: threads' lines do not interleave
  os.write(EVENTS, (json.dumps({'event': event, 't': time.time() - T0}) + '\n').encode())
from tokenformer_jax import prepare
from tokenformer_jax.data import beam_pipeline, build, tokenizer as tokenizer_lib
from tokenformer_jax.errors import parse_flags
mark('imported')
def traced(owner, name, before, after=None):
  fn = getattr(owner, name)
  def call(*args, **kwargs):
    mark(before)
    try:
      return fn(*args, **kwargs)
    finally:
      if after:
        mark(after)
  setattr(owner, name, call)
traced(tokenizer_lib.Tokenizer, '__init__', 'tokenizer start', 'tokenizer end')
traced(tokenizer_lib.Tokenizer, '_fast_encoder', 'encoder start', 'encoder end')
traced(beam_pipeline, 'run', 'pipeline module start')
traced(beam_pipeline, 'local_defaults', 'beam imported')
traced(build, 'process', 'shard start', 'shard end')
from absl import app
sys.argv = ['prepare', *sys.argv[1:]]
app.run(prepare.main, flags_parser=parse_flags)
'''


def _corpus(root: str) -> str:
  for k in range(8):
    with open(os.path.join(root, f'part{k}.jsonl'), 'w', encoding='utf-8') as f:
      f.write(json.dumps({'text': f'def f{k}(x):\n    return x + {k}\n'}) + '\n')
  return os.path.join(root, 'part*.jsonl')


def _args(corpus: str, out: str, workers: int) -> list[str]:
  return [f'--corpus={corpus}', f'--prepared={out}', f'--tokenizer={_TOKENIZER.value}', '--',
          f'--direct_num_workers={workers}']


def _env(**extra) -> dict:
  """--code first on the path (the processes run in the scratch directory: `-m` and `-c` put the
  working directory before it)."""
  return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (_CODE.value, os.environ.get('PYTHONPATH')) if p),
              **extra)


def whole_run(corpus: str, root: str, workers: int) -> dict:
  out = os.path.join(root, f'out_{workers}_{time.monotonic_ns()}')
  before = os.times()
  wall = time.perf_counter()
  subprocess.run([_PYTHON.value, '-m', 'tokenformer_jax.prepare', *_args(corpus, out, workers)],
                 check=True, capture_output=True, cwd=root, env=_env())
  wall = time.perf_counter() - wall
  after = os.times()
  cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
  return {'workers': workers, 'wall_s': wall, 'cpu_s': cpu}


def traced_run(corpus: str, root: str, workers: int) -> dict:
  """Seconds of each phase of one run."""
  name = os.path.join(root, f'traced_{workers}_{time.monotonic_ns()}')  # a fresh output: no run is reused
  out, log = name, name + '.events'
  t0 = time.time()
  subprocess.run([_PYTHON.value, '-c', _TRACED, *_args(corpus, out, workers)], capture_output=True,
                 check=True, cwd=root, env=_env(PREPARE_START_T0=repr(t0), PREPARE_START_EVENTS=log))
  end = time.time() - t0
  with open(log, encoding='utf-8') as f:
    events = [json.loads(line) for line in f]
  times = lambda name: [e['t'] for e in events if e['event'] == name]
  # every call, summed (an older checkout loaded the tokenizer twice; the encoder is built on first use)
  calls = lambda what: sum(b - a for a, b in zip(times(f'{what} start'), times(f'{what} end')))
  phases = {'interpreter and our imports': times('imported')[0],
            'loading the tokenizer': calls('tokenizer'),
            'building the faster encoder': calls('encoder'),
            'importing Beam': times('beam imported')[0] - times('pipeline module start')[0],
            'starting the pipeline (to the first shard)': times('shard start')[0] - times('beam imported')[0],
            'the shards': max(times('shard end')) - times('shard start')[0],
            'ending the pipeline and the process': end - max(times('shard end'))}
  phases['other'] = end - sum(phases.values())
  phases['total'] = end
  return phases


def main(_):
  if not _TOKENIZER.value:
    raise SystemExit('give --tokenizer=FILE')
  with tempfile.TemporaryDirectory() as root:
    corpus = _CORPUS.value or _corpus(root)
    whole_run(corpus, root, 1)  # unmeasured: a first run can fill caches that later runs find
    runs = [whole_run(corpus, root, w) for _ in range(_RUNS.value) for w in (1, 2)]
    pairs = [{w: traced_run(corpus, root, w) for w in ((1, 2) if k % 2 == 0 else (2, 1))}
             for k in range(_TRACED_PAIRS.value)]
  results = {'python': _PYTHON.value, 'code': _CODE.value, 'tokenizer': _TOKENIZER.value,
             'corpus': _CORPUS.value or '8 one-line documents', 'cpu_count': os.cpu_count(), 'runs': runs,
             'traced': pairs[0], 'median': {}}
  if _TRACED_PAIRS.value > 1:
    results['traced_pairs'] = pairs
  scaling = [pair[1]['the shards'] / pair[2]['the shards'] for pair in pairs]
  results['shards, 2 workers / 1'] = {'each pair': scaling, 'median': statistics.median(scaling)}
  for w in (1, 2):
    mine = [r for r in runs if r['workers'] == w]
    if mine:
      results['median'][w] = {k: statistics.median(r[k] for r in mine) for k in ('wall_s', 'cpu_s')}
      median = results['median'][w]
      print(f'{w} worker(s): {median["wall_s"]:.2f} s wall, {median["cpu_s"]:.2f} CPU s (medians of '
            f'{len(mine)}; range {min(r["wall_s"] for r in mine):.2f}-{max(r["wall_s"] for r in mine):.2f} s)')
    print(f'{w} worker(s), traced:')
    for name in pairs[0][w]:
      print(f'  {name}: ' + ', '.join(f'{pair[w][name]:.2f}' for pair in pairs) + ' s')
  if _CORPUS.value:
    print('the shards, 2 workers / 1: ' + ', '.join(f'{x:.3f}' for x in scaling)
          + f' (median {statistics.median(scaling):.3f})')
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
