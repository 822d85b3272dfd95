"""Preparing a corpus: ours (`python -m tokenformer_jax.prepare`) against the reference's own tool.

  python benchmarks/prepare_speed.py --reference=/path/to/TokenFormer --tokenizer=/path/to/tokenizer.json \
      [--reference_python=/path/to/venv/bin/python] [--python=/path/to/venv/bin/python] [--mb=100] \
      [--repeats=3] [--scaling_pairs=5] [--json=FILE]

The reference is GPT-NeoX's `tools/datasets/preprocess_data.py` (a multiprocessing pool, one document
per call to the Hugging Face tokenizer, Megatron's mmap .bin/.idx), run from a checkout of the reference
repository given by --reference, with a Python that has its imports (--reference_python: ftfy,
lm_dataformat, transformers, deepspeed and, for `pkg_resources`, setuptools<70, e.g. a virtual
environment over a Python with torch); nothing of it is imported here. Both get the same corpus and the
same tokenizer.json, with 1 and 2 workers (ours at 2 as threads and as processes: --modes), runs
alternating, after one unmeasured warm-up of each; every run is a fresh process tree measured for wall
seconds, tokens/s, CPU seconds of all its processes and the sum of their peak RSS (process_tree.py). Each
pair of outputs is checked to be the same token stream, byte for byte. Ours is also run in-process (the
path `--mode=train` takes for a raw corpus) and, for the ceiling, the tokenizer alone on the same
documents. Ours at 1 and 2 workers is also run in --scaling_pairs back-to-back pairs: the machine's
speed drifts over minutes, and a pair's ratio is the scaling at one moment.

--python runs ours with another interpreter, such as a virtual environment made by the README's commands:
what a fresh install has. A shared environment can slow every run's start (with IPython installed, Beam
imports it to build a pipeline).

The corpus is real source text, made here (`make_corpus`): the Python standard library's .py files, then
those of the installed packages, in sorted order, one document per file (files that are not UTF-8, have
carriage returns or are blank are skipped; trailing newlines are dropped), up to --mb megabytes, as
JSON Lines in --files files of about equal size (each document onto the smallest file so far).
"""
import glob
import json
import os
import shutil
import statistics
import sys
import sysconfig

from absl import app, flags

import process_tree

_REFERENCE = flags.DEFINE_string('reference', None, 'A checkout of the reference repository.')
_REFERENCE_PYTHON = flags.DEFINE_string('reference_python', sys.executable,
                                        'A Python with the reference script\'s imports.')
_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'The tokenizer.json both tools use.')
_MB = flags.DEFINE_float('mb', 100.0, 'Corpus size in megabytes of JSON Lines.')
_FILES = flags.DEFINE_integer('files', 8, 'Corpus files (ours makes a shard per file).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Runs of each tool at each worker count.')
_WORKERS = flags.DEFINE_list('workers', ['1', '2'], 'Worker counts.')
_ROOT = flags.DEFINE_string('root', '/tmp/tokenformer_prepare_speed', 'Scratch directory.')
_JSON = flags.DEFINE_string('json', None, 'Write the results here.')
_CEILING = flags.DEFINE_bool('ceiling', True, 'Also time the tokenizer alone on the corpus.')
_IN_PROCESS = flags.DEFINE_bool('in_process', True, 'Also run our in-process path (--mode=train).')
_PYTHON = flags.DEFINE_string('python', sys.executable, 'The Python that runs ours.')
_SCALING_PAIRS = flags.DEFINE_integer('scaling_pairs', 5, 'Back-to-back pairs of ours at 1 and 2 workers.')
_MODES = flags.DEFINE_list('modes', ['threads', 'multi_processing'],
                           "Beam's local running modes for ours at more than one worker: threads is "
                           "prepare's default (no --direct_running_mode), the others are Beam's names.")


def source_files() -> list[str]:
  std, site = sysconfig.get_paths()['stdlib'], sysconfig.get_paths()['purelib']
  ours = sorted(f for f in glob.glob(os.path.join(std, '**', '*.py'), recursive=True)
                if not f.startswith(site))
  return ours + sorted(glob.glob(os.path.join(site, '**', '*.py'), recursive=True))


def make_corpus(path: str, megabytes: float, num_files: int) -> list[str]:
  """The corpus files (made once per size and file count); returns them in order."""
  names = [os.path.join(path, f'part{k:02d}.jsonl') for k in range(num_files)]
  if os.path.exists(os.path.join(path, 'done')):
    return names
  os.makedirs(path, exist_ok=True)
  lines, total = [], 0
  for file in source_files():
    try:
      with open(file, 'rb') as f:
        text = f.read().decode('utf-8').rstrip('\n')
    except (OSError, UnicodeDecodeError):
      continue
    if '\r' in text or not text.strip():
      continue
    lines.append(json.dumps({'text': text}) + '\n')
    total += len(lines[-1])
    if total >= megabytes * 1e6:
      break
  outs = [open(n, 'w', encoding='utf-8') for n in names]  # pylint: disable=consider-using-with
  sizes = [0] * num_files
  for line in lines:  # each document onto the smallest file so far: files of about equal size
    k = sizes.index(min(sizes))
    outs[k].write(line)
    sizes[k] += len(line)
  for f in outs:
    f.close()
  with open(os.path.join(path, 'done'), 'w', encoding='utf-8') as f:
    f.write(f'{len(lines)} documents, {total} bytes\n')
  return names


def run_reference(files: list[str], out_dir: str, workers: int) -> tuple[dict, bytes]:
  shutil.rmtree(out_dir, ignore_errors=True)
  os.makedirs(out_dir)
  prefix = os.path.join(out_dir, 'corpus')
  cmd = [_REFERENCE_PYTHON.value, os.path.join(_REFERENCE.value, 'tools', 'datasets', 'preprocess_data.py'),
         f'--input={",".join(files)}', f'--output-prefix={prefix}', '--tokenizer-type=HFTokenizer',
         f'--vocab-file={_TOKENIZER.value}', '--append-eod', f'--workers={workers}']
  r = process_tree.run(cmd, cwd=_REFERENCE.value, log_path=os.path.join(out_dir, 'log.txt'))
  with open(f'{prefix}_text_document.bin', 'rb') as f:
    return r, f.read()


def _our_stream(out_dir: str, files: list[str]) -> bytes:
  """Our train shards' tokens in input-file order (a shard is a group of files, planned by size)."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  from tokenformer_jax.data import build  # pylint: disable=import-outside-toplevel
  with open(os.path.join(out_dir, 'manifest.json'), encoding='utf-8') as f:
    m = json.load(f)
  groups = build.plan_shards(files, [os.path.getsize(f) for f in files], len(files))
  if any(len(g) != 1 for g in groups) or len(m['splits']['train']['shards']) != len(files):
    raise SystemExit('expected one shard per input file')
  by_file = {}
  for index, (file,) in enumerate(groups):
    path = os.path.join(out_dir, build.shard_file('train', index, len(files)))
    reader = array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')
    by_file[file] = b''.join(reader.read_all())
    reader.close()
  return b''.join(by_file[f] for f in files)


def _our_env() -> dict:
  """This checkout's package first, for the processes that run ours."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH')) if p))


def run_ours(files: list[str], out_dir: str, workers: int | None, mode: str | None = None
             ) -> tuple[dict, bytes]:
  """workers=None: in-process, as --mode=train prepares a raw corpus; else Beam's local runner with that
  many workers (threads or processes: mode)."""
  shutil.rmtree(out_dir, ignore_errors=True)
  inputs = ','.join(files)
  if workers is None:
    code = ('import sys; from tokenformer_jax.data import build; '
            'build.run(build.Options(inputs=sys.argv[1], output=sys.argv[2], tokenizer=sys.argv[3]))')
    cmd = [_PYTHON.value, '-c', code, inputs, out_dir, _TOKENIZER.value]
  else:
    beam = [f'--direct_num_workers={workers}'] + (
        [f'--direct_running_mode={mode}'] if mode and mode != 'threads' else [])
    cmd = [_PYTHON.value, '-m', 'tokenformer_jax.prepare', f'--corpus={inputs}', f'--prepared={out_dir}',
           f'--tokenizer={_TOKENIZER.value}', '--', *beam]
  r = process_tree.run(cmd, env=_our_env(), log_path=out_dir + '.log')
  return r, _our_stream(out_dir, files)


_CEILING_CODE = r'''
import json, sys, time
import tokenizers
from tokenformer_jax.data import tokenizer as tokenizer_lib
files, tokenizer_path = sys.argv[1].split(','), sys.argv[2]
docs = [json.loads(line)['text'] for file in files for line in open(file, encoding='utf-8')]
tok = tokenizers.Tokenizer.from_file(tokenizer_path)
ours = tokenizer_lib.load_file(tokenizer_path)
chunk = 256

def timed(encode):
  wall, cpu = time.perf_counter(), time.process_time()
  tokens = encode()
  return {'tokens': tokens, 'wall_s': time.perf_counter() - wall, 'cpu_s': time.process_time() - cpu}

runs = {
  'encode, one document per call (one thread)':
    lambda: sum(len(tok.encode(d, add_special_tokens=False).ids) for d in docs),
  'ours: encode_documents, one core (a Beam worker)':
    lambda: sum(len(ids) - 1 for ids in ours.encode_documents(docs, parallel=False)),
  'encode_batch, all cores':
    lambda: sum(len(e.ids) for i in range(0, len(docs), chunk)
                for e in tok.encode_batch(docs[i:i + chunk], add_special_tokens=False)),
  'encode_batch_fast (no offsets), all cores':
    lambda: sum(len(e.ids) for i in range(0, len(docs), chunk)
                for e in tok.encode_batch_fast(docs[i:i + chunk], add_special_tokens=False)),
  'ours: encode_documents, all cores (in-process)':
    lambda: sum(len(ids) - 1 for i in range(0, len(docs), chunk)
                for ids in ours.encode_documents(docs[i:i + chunk], parallel=True)),
}
rows = {name: timed(fn) for name, fn in runs.items()}
fast = ours._fast_encoder()  # which documents the faster encoder leaves to the Hugging Face tokenizer
left = [d for d in docs if fast.encode(d) is None] if not isinstance(fast, str) else docs
rows['documents left to the Hugging Face tokenizer'] = {
    'documents': len(left), 'of': len(docs),
    'tokens': sum(len(tok.encode(d, add_special_tokens=False).ids) for d in left)}
print(json.dumps(rows))
'''


def ceiling(files: list[str]) -> dict:
  import subprocess  # pylint: disable=import-outside-toplevel
  out = subprocess.run([_PYTHON.value, '-c', _CEILING_CODE, ','.join(files), _TOKENIZER.value],
                       capture_output=True, text=True, check=True, env=_our_env()).stdout
  rows = json.loads(out.strip().splitlines()[-1])
  for row in rows.values():
    if 'wall_s' in row:
      row['tokens_per_s'] = row['tokens'] / row['wall_s']
  return rows


def summary(runs: list[dict]) -> dict:
  """Median and range of each measure over the runs of one tool and worker count."""
  out = {'runs': len(runs)}
  for key in ('wall_s', 'tokens_per_s', 'cpu_s', 'peak_rss_sum_MiB'):
    values = [r[key] for r in runs]
    out[key] = {'median': statistics.median(values), 'min': min(values), 'max': max(values)}
  return out


def _measure(name: str, fn, results: dict, **fields) -> bytes:
  r, stream = fn()
  r.update(tool=name, **fields, tokens=len(stream) // 2)
  r['tokens_per_s'] = r['tokens'] / r['wall_s']
  results['runs'].append(r)
  print(json.dumps({k: v for k, v in r.items() if k != 'processes'}), flush=True)
  return stream


def _round(files: list[str], workers: int, repeat: int, results: dict) -> bytes:
  """The reference and ours (each mode) at one worker count, in an order that alternates by round; the
  streams checked equal. Returns the reference's."""
  root = _ROOT.value
  runs = {'reference': lambda: run_reference(files, os.path.join(root, f'out_reference_{workers}'), workers)}
  for mode in (_MODES.value if workers > 1 else [None]):
    runs[f'ours ({mode})' if mode else 'ours'] = (
        lambda mode=mode: run_ours(files, os.path.join(root, f'out_ours_{workers}'), workers, mode))
  names = list(runs) if (repeat + workers) % 2 else list(runs)[::-1]
  streams = {name: _measure(name, runs[name], results, workers=workers, repeat=repeat) for name in names}
  for name, stream in streams.items():
    if stream != streams['reference']:
      raise SystemExit(f'the token streams differ: {name} at {workers} workers, {len(stream) // 2} against '
                       f'{len(streams["reference"]) // 2} tokens')
  return streams['reference']


def _scaling_pairs(files: list[str], results: dict, reference_stream: bytes) -> dict:
  """Ours at 1 and 2 worker threads back to back, which one first alternating; each pair's ratio of
  tokens/s, and their median."""
  pairs = []
  for k in range(_SCALING_PAIRS.value):
    order = (1, 2) if k % 2 == 0 else (2, 1)
    pair = {}
    for w in order:
      out_dir = os.path.join(_ROOT.value, f'out_ours_{w}')
      stream = _measure('ours, paired', lambda w=w, out_dir=out_dir: run_ours(files, out_dir, w), results,
                        workers=w, repeat=k)
      if stream != reference_stream:
        raise SystemExit(f'the token streams differ: ours at {w} workers, paired run {k}')
      pair[w] = results['runs'][-1]['tokens_per_s']
    pairs.append(pair[2] / pair[1])
  return {'2 workers / 1, each pair': pairs, 'median': statistics.median(pairs)} if pairs else {}


def _warm_up(files: list[str]) -> None:
  """Each tool once on a few documents, unmeasured: a first import can fill caches (and start helper
  processes) that later runs do not."""
  path = os.path.join(_ROOT.value, 'warm_up.jsonl')
  with open(files[0], encoding='utf-8') as src, open(path, 'w', encoding='utf-8') as dst:
    dst.writelines(line for _, line in zip(range(20), src))
  run_reference([path], os.path.join(_ROOT.value, 'out_warm_up_reference'), 1)
  run_ours([path], os.path.join(_ROOT.value, 'out_warm_up_ours'), 1)


def _summaries(results: dict) -> dict:
  table = {}
  for r in results['runs']:
    key = f'{r["tool"]}, {r["workers"]} workers' if r['workers'] else r['tool']
    if r['tool'] == 'ours, paired':
      continue
    table.setdefault(key, []).append(r)
  return {key: summary(runs) for key, runs in table.items()}


def _ratios(table: dict, workers: list[int]) -> dict:
  """Ours over the reference (ratios of medians) at each worker count, and each tool's scaling."""
  out = {}
  median = lambda key, measure: table[key][measure]['median']
  ours_names = sorted({k.split(',')[0] for k in table if k.startswith('ours') and 'in-process' not in k})
  for w in workers:
    for name in ours_names:
      if f'{name}, {w} workers' in table:
        out[f'{name} / reference, {w} workers'] = {
            m: median(f'{name}, {w} workers', m) / median(f'reference, {w} workers', m)
            for m in ('tokens_per_s', 'cpu_s', 'peak_rss_sum_MiB')}
  if len(workers) == 2:
    lo, hi = workers
    for name in ['reference', *ours_names]:
      if f'{name}, {hi} workers' in table:
        base = f'{name}, {lo} workers' if f'{name}, {lo} workers' in table else f'ours, {lo} workers'
        out[f'{name}: {hi} workers / {lo}'] = (median(f'{name}, {hi} workers', 'tokens_per_s')
                                              / median(base, 'tokens_per_s'))
  return out


def main(_):
  if not _REFERENCE.value or not _TOKENIZER.value:
    raise SystemExit('give --reference=CHECKOUT and --tokenizer=tokenizer.json')
  process_tree.become_subreaper()
  files = make_corpus(os.path.join(_ROOT.value, f'corpus_{_MB.value:g}MB_{_FILES.value}'), _MB.value,
                      _FILES.value)
  results = {'machine': {'cpu_count': os.cpu_count(), 'python': sys.version.split()[0],
                         'ours_python': _PYTHON.value,
                         'load_at_start': os.getloadavg()},
             'corpus': {'MB': sum(os.path.getsize(f) for f in files) / 1e6, 'files': len(files)},
             'tokenizer': _TOKENIZER.value, 'runs': []}
  workers = [int(w) for w in _WORKERS.value]
  _warm_up(files)
  for repeat in range(_REPEATS.value):
    for w in workers:
      reference_stream = _round(files, w, repeat, results)
    if _IN_PROCESS.value:
      stream = _measure('ours in-process', lambda: run_ours(files, os.path.join(_ROOT.value, 'out_in'), None),
                        results, workers=None, repeat=repeat)
      if stream != reference_stream:
        raise SystemExit('the in-process token stream differs from the reference')
  results['scaling_pairs'] = _scaling_pairs(files, results, reference_stream)
  results['same_token_stream'] = True
  results['tokens'] = results['runs'][0]['tokens']
  results['summary'] = _summaries(results)
  results['ratios'] = _ratios(results['summary'], workers)
  if _CEILING.value:
    results['ceiling'] = ceiling(files)
  results['machine']['load_at_end'] = os.getloadavg()
  for name, s in results['summary'].items():
    print(f'{name}: {s["tokens_per_s"]["median"] / 1e6:.3f}M tokens/s '
          f'[{s["tokens_per_s"]["min"] / 1e6:.3f}, {s["tokens_per_s"]["max"] / 1e6:.3f}], '
          f'{s["cpu_s"]["median"]:.1f} CPU s, {s["peak_rss_sum_MiB"]["median"]:.0f} MiB summed peak RSS')
  for name, value in results['ratios'].items():
    print(name, json.dumps(value))
  if results['scaling_pairs']:
    pairs = results['scaling_pairs']['2 workers / 1, each pair']
    print(f'ours, 2 workers / 1 in back-to-back pairs: median {results["scaling_pairs"]["median"]:.3f} '
          f'({", ".join(f"{p:.3f}" for p in pairs)})')
  for name, row in results.get('ceiling', {}).items():
    if 'wall_s' in row:
      print(f'ceiling, {name}: {row["tokens_per_s"] / 1e6:.3f}M tokens/s ({row["cpu_s"]:.1f} CPU s)')
    else:
      print(f'{name}: {row["documents"]} of {row["of"]} ({row["tokens"]} tokens)')
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
