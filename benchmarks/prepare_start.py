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
  out, log = os.path.join(root, f'traced_{workers}'), os.path.join(root, f'traced_{workers}.events')
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
    corpus = _corpus(root)
    whole_run(corpus, root, 1)  # unmeasured: a first run can fill caches that later runs find
    runs = [whole_run(corpus, root, w) for _ in range(_RUNS.value) for w in (1, 2)]
    traced = {w: traced_run(corpus, root, w) for w in (1, 2)}
  results = {'python': _PYTHON.value, 'code': _CODE.value, 'tokenizer': _TOKENIZER.value,
             'cpu_count': os.cpu_count(), 'runs': runs, 'traced': traced, 'median': {}}
  for w in (1, 2):
    mine = [r for r in runs if r['workers'] == w]
    results['median'][w] = {k: statistics.median(r[k] for r in mine) for k in ('wall_s', 'cpu_s')}
    print(f'{w} worker(s): {results["median"][w]["wall_s"]:.2f} s wall, {results["median"][w]["cpu_s"]:.2f} '
          f'CPU s (medians of {len(mine)}; range {min(r["wall_s"] for r in mine):.2f}-'
          f'{max(r["wall_s"] for r in mine):.2f} s)')
    for name, seconds in traced[w].items():
      print(f'  {name}: {seconds:.2f} s')
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
