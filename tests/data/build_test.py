"""Preparing corpora: the manifest, held-out documents, reruns, a killed prepare, and Beam runners."""
import json
import logging
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests.helpers import ROOT, error_line, tree_digest, write_hf_tokenizer
from tokenformer_jax.data import manifest as manifest_lib
from tokenformer_jax.data import pipeline, build, sources
from tokenformer_jax.data import tokenizer as tokenizer_lib
from tokenformer_jax.errors import UserError

KJV_DOCS = list(sources.documents(sources.KJV))


@pytest.fixture(scope='module')
def kjv(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('kjv'))
  return out, build.run(build.Options(inputs='kjv', output=out, train_vocab=256,
                                          validation_fraction=0.05), log=lambda _: None)


def _documents(dataset_dir, m, split):
  """A split's documents, decoded (end-of-text separates them)."""
  tok = tokenizer_lib.load_file(os.path.join(dataset_dir, m['tokenizer']['file']))
  ids = np.concatenate([pipeline.shards.Reader(os.path.join(dataset_dir, e['file']), e['tokens'],
                                               m['dtype'], m['record_tokens']).read(0, e['tokens'])
                        for e in m['splits'][split]['shards']])
  ends = np.flatnonzero(ids == tok.eos_id)
  assert ends[-1] == len(ids) - 1
  return [tok.decode(ids[a + 1:b]) for a, b in zip(np.r_[-1, ends[:-1]], ends)]


@pytest.fixture
def jsonl_files(tmp_path):
  """Four JSON Lines files of KJV chapters."""
  chapters = [c for d in KJV_DOCS[:8] for c in d.split('\n\n')]
  paths = []
  for k in range(4):
    path = tmp_path / 'in' / f'part{k}.jsonl'
    path.parent.mkdir(exist_ok=True)
    path.write_text(''.join(json.dumps({'text': c}) + '\n' for c in chapters[k::4]))
    paths.append(str(path))
  return paths


def test_kjv_manifest_and_held_out_books(kjv):
  out, m = kjv
  assert m == manifest_lib.read(out)
  assert m['tokenizer']['kind'] == 'sentencepiece' and m['tokenizer']['vocab_size'] == 256
  assert m['dtype'] == '<u2' and m['request']['validation_fraction'] == 0.05
  train, val = m['splits']['train'], m['splits']['validation']
  assert train['documents'] + val['documents'] == 66 and 1 <= val['documents'] <= 8
  held_out = [build.is_validation(f'kjv:{i}', 0.05) for i in range(66)]
  docs_train, docs_val = _documents(out, m, 'train'), _documents(out, m, 'validation')
  assert docs_train == [d for d, v in zip(KJV_DOCS, held_out) if not v]
  assert docs_val == [d for d, v in zip(KJV_DOCS, held_out) if v]
  assert train['tokens'] == sum(e['tokens'] for e in train['shards'])


def test_rerun_keeps_the_dataset_and_other_options_are_refused(kjv):
  out, m = kjv
  before = tree_digest(out)
  assert build.run(build.Options(inputs='kjv', output=out, train_vocab=256,
                                     validation_fraction=0.05), log=lambda _: None) == m
  with pytest.raises(UserError, match='already holds a dataset prepared from other inputs or options'):
    build.run(build.Options(inputs='kjv', output=out, train_vocab=512, validation_fraction=0.05))
  assert tree_digest(out) == before


def test_killed_prepare_never_looks_complete_and_reuses_finished_shards(jsonl_files, tmp_path, monkeypatch):
  out = str(tmp_path / 'out')
  tok = write_hf_tokenizer(tmp_path / 'tokenizer.json')
  opts = build.Options(inputs=','.join(jsonl_files), output=out, tokenizer=tok, num_shards=4,
                         validation_fraction=0.1)
  real = build._write_batch  # pylint: disable=protected-access
  calls = []

  def dies_in_the_third_shard(batch, tokenizer, writers, parallel):
    calls.append(writers)
    if len({id(w) for w in calls}) == 3:
      raise KeyboardInterrupt
    real(batch, tokenizer, writers, parallel)

  monkeypatch.setattr(build, '_write_batch', dies_in_the_third_shard)
  with pytest.raises(KeyboardInterrupt):
    build.run(opts)
  assert not os.path.exists(manifest_lib.path(out))
  with pytest.raises(UserError, match='no prepared dataset in .*manifest.json is missing'):
    manifest_lib.read(out)
  done = sorted(os.listdir(os.path.join(out, '.prepare')))
  assert len(done) == 2 and not [f for f in os.listdir(out) if f.endswith('.tmp')]
  # what is left is the resumable state: the finished tasks' shards and their records, no tokenizer
  assert sorted(os.listdir(out)) == ['.prepare'] + sorted(
      build.shard_file(split, i, 4) for split in ('train', 'validation') for i in (0, 1))
  times = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out) if '-of-' in f}
  monkeypatch.setattr(build, '_write_batch', real)
  said = []
  m = build.run(opts, log=said.append)
  assert said == ['encoding with tiktoken (the ids of the tokenizer.json, exactly)',
                  f'{out}: reusing 2 of 4 shards that an earlier prepare finished']
  reused = [f for f, t in times.items() if os.stat(os.path.join(out, f)).st_mtime_ns == t]
  assert len(reused) == 4  # train and validation shards of the two finished tasks
  assert m['splits']['train']['documents'] + m['splits']['validation']['documents'] == sum(
      1 for p in jsonl_files for _ in open(p))


def test_beam_runners_write_the_in_process_shards(jsonl_files, tmp_path):
  tok = write_hf_tokenizer(tmp_path / 'tokenizer.json')
  outputs = {}
  for name, beam_args in [('in_process', None), ('beam', []),
                          ('beam_2', ['--direct_num_workers=2', '--direct_running_mode=multi_processing'])]:
    out = str(tmp_path / name)
    m = build.run(build.Options(inputs=f'{tmp_path}/in/*.jsonl', output=out, tokenizer=tok,
                                    validation_fraction=0.2), beam_args=beam_args)
    outputs[name] = {e['file']: open(os.path.join(out, e['file']), 'rb').read()
                     for s in m['splits'].values() for e in s['shards']}
    assert m['tokenizer']['kind'] == 'huggingface' and m['tokenizer']['eos_id'] == 0
  assert len(outputs['in_process']) == 8
  assert outputs['beam'] == outputs['in_process'] == outputs['beam_2']


def _prepare_cli(*args):
  proc = subprocess.run([sys.executable, '-m', 'tokenformer_jax.prepare', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stdout, proc.stderr


def test_cli_prepares_and_reports(jsonl_files, tmp_path):
  args = (f'--corpus={tmp_path}/in/*.jsonl', f'--prepared={tmp_path}/d', '--vocab_size=300',
          '--val_fraction=0.1', '--', '--direct_num_workers=2')
  code, out, err = _prepare_cli(*args)
  assert code == 0, err
  assert 'train: ' in out and '4 shards' in out and 'sentencepiece, 300 ids' in out and 'reusing' not in out
  m = manifest_lib.read(str(tmp_path / 'd'))
  assert m['splits']['train']['tokens'] > 10_000
  os.remove(manifest_lib.path(str(tmp_path / 'd')))  # as if stopped before its last shard
  os.remove(tmp_path / 'd' / '.prepare' / '00003-of-00004.json')
  code, out, err = _prepare_cli(*args)
  assert code == 0, err
  assert f'{tmp_path}/d: reusing 3 of 4 shards that an earlier prepare finished' in out
  assert manifest_lib.read(str(tmp_path / 'd')) == m


def test_each_flag_is_named_after_the_config_key_it_stands_for():
  """--corpus is data.corpus, --prepared data.prepared, ...: one name per setting (prepare-only: num_shards)."""
  script = ('from absl import flags; from tokenformer_jax import prepare, config; '
            'names = {v.name for v in vars(prepare).values() if isinstance(v, flags.FlagHolder)}; '
            'print(sorted(names - set(config.base_config().data) - {"num_shards"}))')
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == '[]', proc.stdout + proc.stderr


@pytest.mark.parametrize('content, args, match', [
    ('{"text": "fine"}\nnot json\n', [], r'error: .*bad\.jsonl:2: not a JSON object'),
    ('{"body": "x"}\n', [], r'error: .*bad\.jsonl:1: no "text" field'),
    ('', [], 'error: the input has no text'),
    ('{"text": "fine"}\n', ['--tokenizer=/a.model', '--vocab_size=300'],
     'error: give one of --tokenizer=FILE and --vocab_size'),
    ('{"text": "fine"}\n', ['--vocab_size=300'], 'error: sentencepiece training failed: Vocabulary size'),
    ('{"text": "fine"}\n', ['--tokenizer=/nonexistent.model', '--vocab_size=0'],
     'error: tokenizer file not found: /nonexistent.model'),
])
@pytest.mark.slow
def test_cli_bad_input(tmp_path, content, args, match):
  (tmp_path / 'bad.jsonl').write_text(content)
  tok = args or [f'--tokenizer={write_hf_tokenizer(tmp_path / "tokenizer.json")}']
  code, _, err = _prepare_cli(f'--corpus={tmp_path}/bad.jsonl', f'--prepared={tmp_path}/d', *tok)
  assert code == 2 and error_line(err).startswith('error: ')
  assert len([l for l in err.splitlines() if l.startswith('error: ')]) == 1
  assert re.search(match, error_line(err)), error_line(err)
  assert not os.path.exists(tmp_path / 'd')  # refused before any shard was finished: nothing left


@pytest.mark.parametrize('content, beam_args', [
    ('', None), ('\n  \n', []),                       # no text: found before any work
    ('{"text": "fine"}\nnot json\n', None),           # bad input in the only shard: none finished
    ('{"text": "fine"}\nnot json\n', [])])
def test_a_failed_prepare_leaves_the_output_as_it_was(tmp_path, content, beam_args):
  (tmp_path / 'in.jsonl').write_text(content)
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'notes.txt').write_text('mine')
  before = tree_digest(out)
  tok = write_hf_tokenizer(tmp_path / 'tokenizer.json')
  with pytest.raises(UserError, match='has no text|not a JSON object'):
    build.run(build.Options(inputs=str(tmp_path / 'in.jsonl'), output=str(out), tokenizer=tok),
                beam_args=beam_args, log=lambda _: None)
  assert sorted(os.listdir(out)) == ['notes.txt'] and tree_digest(out) == before


@pytest.mark.slow
def test_a_second_prepare_into_a_held_output_is_refused(jsonl_files, tmp_path):
  from tokenformer_jax.runtime import workdir_lock
  out = tmp_path / 'd'
  with workdir_lock.hold_here(str(out)):  # as a prepare (or a run) in progress holds it
    code, _, err = _prepare_cli(f'--corpus={tmp_path}/in/*.jsonl', f'--prepared={out}', '--vocab_size=300')
    assert code == 2, err
    assert [line for line in err.splitlines() if line.startswith('error: ')] == [error_line(err)]
    assert re.fullmatch(f'error: {out} is in use by another run \\(host .*, pid {os.getpid()}, since .*',
                        error_line(err)), err
    assert os.listdir(out) == ['.lock']
  assert not out.exists()


def test_a_prepare_holds_its_output_until_done(jsonl_files, tmp_path, monkeypatch):
  out = tmp_path / 'd'
  real, seen = build.process, []

  def process(task, tokenizer):
    seen.append(os.path.exists(out / '.lock'))
    return real(task, tokenizer)
  monkeypatch.setattr(build, 'process', process)
  build.run(build.Options(inputs=','.join(jsonl_files), output=str(out), train_vocab=300),
              log=lambda _: None)
  assert seen == [True] * 4 and not (out / '.lock').exists()


def test_without_beam_installed_nothing_is_written(tmp_path, monkeypatch):
  from tokenformer_jax.data import beam_pipeline
  monkeypatch.setattr(beam_pipeline.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(UserError, match=r"runs on Apache Beam: pip install 'tokenformer_jax\[prepare\]'"):
    build.run(build.Options(inputs='kjv', output=str(tmp_path / 'd'), train_vocab=256), beam_args=[])
  assert not (tmp_path / 'd').exists()


@pytest.mark.parametrize('given, expected', [
    ([], ['--runner=FnApiRunner', '--direct_num_workers=0']),
    (['--direct_num_workers=3'], ['--runner=FnApiRunner', '--direct_num_workers=3']),
    (['--direct_num_workers', '1'], ['--runner=FnApiRunner', '--direct_num_workers', '1']),
    (['--direct_num_workers=2', '--direct_running_mode=multi_processing'],
     ['--runner=FnApiRunner', '--direct_num_workers=2', '--direct_running_mode=multi_processing']),
    (['--runner=DataflowRunner', '--project=p'], ['--runner=DataflowRunner', '--project=p'])])
def test_local_runner_defaults_to_a_worker_per_core(given, expected):
  """A worker encodes on one core, so the local runner without options runs a worker thread per core."""
  from tokenformer_jax.data import beam_pipeline
  assert beam_pipeline.local_defaults(given) == expected


# What test_default_local_workers_run_at_once shares between the workers: Beam pickles the DoFn for each
# worker, and a module-level function is pickled by name, so the workers reach these and not copies.
_AT_ONCE = {}


def _process_two_at_once(task, tokenizer, parallel=True):
  if threading.get_ident() not in _AT_ONCE['threads']:
    _AT_ONCE['threads'].add(threading.get_ident())
    _AT_ONCE['barrier'].wait()  # BrokenBarrierError after 60 s when the workers run one after the other
  return _AT_ONCE['process'](task, tokenizer, parallel)


def test_default_local_workers_run_at_once_without_beams_warning(jsonl_files, tmp_path, monkeypatch, caplog):
  """Two workers in the default (in_memory) mode each reach a barrier that only opens for two at once;
  Beam's warning that they may not run in parallel is not shown."""
  tok = write_hf_tokenizer(tmp_path / 'tokenizer.json')
  monkeypatch.setitem(_AT_ONCE, 'threads', set())
  monkeypatch.setitem(_AT_ONCE, 'barrier', threading.Barrier(2, timeout=60))
  monkeypatch.setitem(_AT_ONCE, 'process', build.process)
  monkeypatch.setattr(build, 'process', _process_two_at_once)
  caplog.set_level(logging.WARNING)
  build.run(build.Options(inputs=','.join(jsonl_files), output=str(tmp_path / 'd'), tokenizer=tok),
            beam_args=['--direct_num_workers=2'])
  assert len(_AT_ONCE['threads']) == 2
  assert not [r for r in caplog.records if 'direct_num_workers' in r.getMessage()]


@pytest.mark.parametrize('args, in_process', [
    ([], True), (['--direct_num_workers=1'], True), (['--direct_num_workers=2'], True),
    (['--direct_num_workers=2', '--direct_running_mode=multi_processing'], False),
    (['--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner'], True),
    (['--runner=DataflowRunner', '--project=p'], False), (['--runner=DirectRunner'], False)])
def test_only_workers_in_other_processes_are_sent_the_tokenizer_file(args, in_process):
  """The local runner's threads share the driver's tokenizer; any other worker loads it from the file
  that the pipeline carries (multi_processing: test_beam_runners_write_the_in_process_shards)."""
  from apache_beam.options.pipeline_options import PipelineOptions
  from tokenformer_jax.data import beam_pipeline
  assert beam_pipeline.workers_in_this_process(PipelineOptions(beam_pipeline.local_defaults(args))) == in_process
