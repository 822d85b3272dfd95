"""The data path at scale: prepare throughput (1 and 2 Beam workers; sentencepiece and tokenizer.json),
the training pipeline's tokens/s, peak memory for a small and a large corpus, and start-up time.

  python benchmarks/data.py [--sizes_mb=10,500] [--json=FILE]

The corpora are made here: KJV chapters as JSON Lines (4 files per corpus), each line prefixed with its
number, repeated to the size asked. The tokenizers are trained on the KJV text: a sentencepiece BPE and a
byte-level BPE `tokenizer.json` (the kind of the released models' GPT-NeoX-20B tokenizer), 8,192 ids each.
Every measurement runs in a fresh process; peak RSS is the largest single process of the run (a Beam
driver or worker). A Beam worker encodes on one core, so workers scale with cores; the `tokenizer.json`
is encoded by tiktoken (data/fast_encoder.py). `prepare_speed.py` measures prepare on the released
models' vocabulary and real text, against the reference's tool.
"""
import json
import os
import subprocess
import sys

from absl import app, flags


_SIZES = flags.DEFINE_list('sizes_mb', ['10', '500'], 'Corpus sizes in MB of JSON Lines (small, large).')
_ROOT = flags.DEFINE_string('root', '/tmp/tokenformer_data_bench', 'Scratch directory (corpora, datasets).')
_JSON = flags.DEFINE_string('json', None, 'Write the results here.')
_PIPELINE_S = flags.DEFINE_float('pipeline_seconds', 10.0, 'How long to read the training pipeline.')
_SEQ = flags.DEFINE_integer('seq_len', 2048, 'Training window length.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Global batch (one process).')
VOCAB = 8192
FILES = 4


def make_corpus(path: str, megabytes: float) -> None:
  from tokenformer_jax.data import sources
  if os.path.exists(os.path.join(path, 'done')):
    return
  os.makedirs(path, exist_ok=True)
  chapters = [c for d in sources.documents(sources.KJV) for c in d.split('\n\n')]
  budget = int(megabytes * 10**6) // FILES
  for k in range(FILES):
    with open(os.path.join(path, f'part{k}.jsonl'), 'w') as f:
      written, n = 0, 0
      while written < budget:
        line = json.dumps({'text': f'{n}. {chapters[(n * FILES + k) % len(chapters)]}'}) + '\n'
        f.write(line)
        written += len(line)
        n += 1
  open(os.path.join(path, 'done'), 'w').close()


def make_tokenizers(root: str) -> dict:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from tokenformer_jax.data import sources, tokenizer as tokenizer_lib
  sp_path, hf_path = os.path.join(root, 'kjv.model'), os.path.join(root, 'tokenizer.json')
  docs = list(sources.documents(sources.KJV))
  if not os.path.exists(sp_path):
    with open(sp_path, 'wb') as f:
      f.write(tokenizer_lib.train_sentencepiece(docs, VOCAB).file_bytes)
  if not os.path.exists(hf_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=['<|endoftext|>'], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    tok.save(hf_path)
  return {'sentencepiece': sp_path, 'tokenizer.json': hf_path}


def measured(cmd: list[str]) -> dict:
  """Runs cmd in a fresh process: wall seconds, and the peak RSS of its largest process."""
  probe = ('import resource, subprocess, sys, time, json; t = time.perf_counter(); '
           'r = subprocess.run(sys.argv[1:], capture_output=True, text=True); '
           'print(json.dumps({"rc": r.returncode, "s": time.perf_counter() - t, '
           '"rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "out": r.stdout[-4000:], '
           '"err": r.stderr[-2000:]}))')
  out = json.loads(subprocess.run([sys.executable, '-c', probe, *cmd], capture_output=True, text=True,
                                  check=True).stdout)
  if out['rc'] != 0:
    raise SystemExit(f'failed: {" ".join(cmd)}\n{out["err"]}')
  return {'seconds': out['s'], 'peak_rss_MiB': out['rss'] / 1024, 'stdout': out['out']}


def prepare(corpus: str, output: str, tokenizer: str, workers: int) -> dict:
  import shutil
  shutil.rmtree(output, ignore_errors=True)
  beam = ['--', f'--direct_num_workers={workers}'] + (
      ['--direct_running_mode=multi_processing'] if workers > 1 else [])
  r = measured([sys.executable, '-m', 'tokenformer_jax.prepare', f'--corpus={corpus}/*.jsonl',
                f'--prepared={output}', f'--tokenizer={tokenizer}', '--val_fraction=0.02', *beam])
  with open(os.path.join(output, 'manifest.json')) as f:
    m = json.load(f)
  tokens = m['splits']['train']['tokens'] + m['splits']['validation']['tokens']
  return {'workers': workers, 'input_MB': m['input_bytes'] / 1e6, 'tokens': tokens,
          'seconds': r['seconds'], 'tokens_per_s': tokens / r['seconds'],
          'input_MB_per_s': m['input_bytes'] / 1e6 / r['seconds'], 'peak_rss_MiB': r['peak_rss_MiB']}


_PIPELINE = '''
import sys, time, json, resource
start = time.perf_counter()
import ml_collections
from tokenformer_jax.data import dataset, pipeline
imported = time.perf_counter()
cfg = ml_collections.ConfigDict(dict(prepared=sys.argv[1], mixture='', tokenizer='', corpus='',
                                     vocab_size=0, val_fraction=0.05, text_key='text', cache_dir='',
                                     validation=''))
seq, batch, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
run = dataset.open_run_data(cfg, '/nonexistent')
it = pipeline.BatchIterator(run.train_stream(seq, 0, batch), batch)
next(it)
first = time.perf_counter()
n = 0
while time.perf_counter() - first < seconds:
  next(it); n += 1
elapsed = time.perf_counter() - first
print(json.dumps({'import_s': imported - start, 'open_and_first_batch_s': first - imported,
                  'batches': n, 'tokens_per_s': n * batch * seq / elapsed,
                  'peak_rss_MiB': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def read_pipeline(dataset_dir: str) -> dict:
  r = measured([sys.executable, '-c', _PIPELINE, dataset_dir, str(_SEQ.value), str(_BATCH.value),
                str(_PIPELINE_S.value)])
  return json.loads(r['stdout'].strip().splitlines()[-1])


def train_startup(dataset_dir: str, workdir: str) -> dict:
  """Seconds from launching --mode=train until its 'model:' line (data opened, state built; before the
  first step compiles), and in all for one step."""
  import datetime
  import shutil
  shutil.rmtree(workdir, ignore_errors=True)
  launched = datetime.datetime.now()
  r = subprocess.run([sys.executable, '-m', 'tokenformer_jax.main', '--config=experiments/tiny.py',
                      f'--workdir={workdir}', f'--config.data.prepared={dataset_dir}', '--config.train.steps=1',
                      '--config.train.eval_batches=1', '--config.train.batch_size=2', '--config.data.seq_len=64',
                      '--config.train.sample_tokens=0'],
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True,
                     text=True)
  total = (datetime.datetime.now() - launched).total_seconds()
  if r.returncode != 0:
    raise SystemExit(r.stderr[-2000:])
  line = next(l for l in r.stderr.splitlines() if 'model:' in l)
  stamp = datetime.datetime.strptime(f'{launched.year}{line[1:5]} {line[6:21]}', '%Y%m%d %H:%M:%S.%f')
  return {'until_model_line_s': (stamp - launched).total_seconds(), 'one_step_run_s': total}


def main(_):
  import harness
  from tokenformer_jax.runtime import platforms
  platforms.choose()
  root = _ROOT.value
  os.makedirs(root, exist_ok=True)
  tokenizers = make_tokenizers(root)
  small, large = (float(s) for s in _SIZES.value)
  results = {'machine': harness.machine(), 'vocab': VOCAB, 'seq_len': _SEQ.value,
             'batch_size': _BATCH.value, 'prepare': [], 'pipeline': []}
  for mb in (small, large):
    corpus = os.path.join(root, f'corpus_{mb:g}MB')
    make_corpus(corpus, mb)
    for name, path in tokenizers.items():
      for workers in (1, 2):
        if mb == small and workers == 2:
          continue
        row = {'corpus_MB': mb, 'tokenizer': name,
               **prepare(corpus, os.path.join(root, f'ds_{mb:g}_{name}'), path, workers)}
        results['prepare'].append(row)
        print(json.dumps(row), flush=True)
    row = {'corpus_MB': mb, 'tokenizer': 'sentencepiece',
           **read_pipeline(os.path.join(root, f'ds_{mb:g}_sentencepiece'))}
    row['train_startup'] = train_startup(os.path.join(root, f'ds_{mb:g}_sentencepiece'),
                                         os.path.join(root, 'workdir'))
    results['pipeline'].append(row)
    print(json.dumps(row), flush=True)
  peak = {k: max(r['peak_rss_MiB'] for r in results['prepare'] if r['corpus_MB'] == k) for k in (small, large)}
  results['prepare_rss_ratio'] = peak[large] / peak[small]
  results['pipeline_rss_ratio'] = results['pipeline'][1]['peak_rss_MiB'] / results['pipeline'][0]['peak_rss_MiB']
  print(f'peak RSS {large:g} MB / {small:g} MB: prepare {results["prepare_rss_ratio"]:.2f}, '
        f'pipeline {results["pipeline_rss_ratio"]:.2f}')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
