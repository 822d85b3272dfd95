"""A run's data: raw text prepared once and never rebuilt silently, prepared datasets and mixtures,
and the tokenizer as part of a checkpoint's identity."""
import json
import os
import re
import shutil

import ml_collections
import pytest

from tests.helpers import FAST, error_line, run_main, tree_digest, write_hf_tokenizer
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.data import dataset, pipeline, build
from tokenformer_jax.errors import UserError


def _cfg(**overrides):
  fields = dict(prepared='', mixture='', validation='', corpus='kjv', tokenizer='', vocab_size=256,
                val_fraction=0.05, text_key='text', cache_dir='', seq_len=32)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@pytest.fixture
def texts(tmp_path):
  d = tmp_path / 'texts'
  d.mkdir()
  for k in range(3):
    (d / f'{k}.txt').write_text(('In the beginning God created the heaven and the earth. ' * 40 + '\n') * 8)
  return d


def test_raw_corpus_prepared_once_then_reused(tmp_path):
  run = dataset.open_run_data(_cfg(), str(tmp_path / 'w'))
  data_dir = tmp_path / 'w' / 'data'
  assert run.dirs == [str(data_dir)] and run.vocab_size == 256 and run.eos_id == 1
  before = tree_digest(data_dir)
  again = dataset.open_run_data(_cfg(), str(tmp_path / 'w'))
  assert again.tokenizer.sha256 == run.tokenizer.sha256 and tree_digest(data_dir) == before
  assert len(run.validation(32)) > 0
  with pytest.raises(UserError, match='no prepared data in'):
    dataset.open_run_data(_cfg(), str(tmp_path / 'other'), create=False)


@pytest.mark.parametrize('change, named', [
    ('append', 'the corpus files'), ('new_file', 'the number of corpus files'),
    ('vocab', 'the tokenizer'), ('val_fraction', 'data.val_fraction')])
def test_a_changed_corpus_is_refused_never_rebuilt(texts, tmp_path, change, named):
  cfg = _cfg(corpus=f'{texts}/*.txt', vocab_size=64, val_fraction=0.34)
  workdir = str(tmp_path / 'w')
  dataset.open_run_data(cfg, workdir)
  before = tree_digest(os.path.join(workdir, 'data'))
  if change == 'append':
    with open(texts / '0.txt', 'a') as f:
      f.write('one more line\n')
  elif change == 'new_file':
    (texts / '3.txt').write_text('more text\n')
  elif change == 'vocab':
    cfg.vocab_size = 80
  else:
    cfg.val_fraction = 0.5
  with pytest.raises(UserError, match=f'was prepared from other data: .*{named}.* never rebuilt silently'):
    dataset.open_run_data(cfg, workdir)
  assert tree_digest(os.path.join(workdir, 'data')) == before


@pytest.fixture(scope='module')
def two_datasets(tmp_path_factory):
  root = tmp_path_factory.mktemp('prepared')
  tok = write_hf_tokenizer(root / 'tokenizer.json')
  dirs = []
  for k, text in enumerate(['In the beginning God created the heaven and the earth. ',
                            'And the earth was without form, and void. ']):
    (root / f'{k}.jsonl').write_text(''.join(f'{{"text": "{text * 30}{i}"}}\n' for i in range(40)))
    build.run(build.Options(inputs=str(root / f'{k}.jsonl'), output=str(root / f'd{k}'), tokenizer=tok,
                                validation_fraction=0.2), log=lambda _: None)
    dirs.append(str(root / f'd{k}'))
  return root, tok, dirs


def test_prepared_and_mixture(two_datasets, tmp_path):
  _, tok, (d0, d1) = two_datasets
  run = dataset.open_run_data(_cfg(prepared=d0), str(tmp_path / 'w'))
  assert run.tokenizer.kind == 'huggingface' and run.eos_id == 0
  assert not os.path.exists(tmp_path / 'w')  # nothing is written for a prepared dataset
  mix = dataset.open_run_data(_cfg(mixture=f'{d0}:3,{d1}:1', tokenizer=tok), str(tmp_path / 'w'))
  assert mix.weights == [3.0, 1.0] and mix.dirs == [d0, d1]
  batch = next(iter(mix.train_stream(32, 0, 4).batch(4)))
  assert batch.shape == (4, 33)


@pytest.mark.parametrize('overrides, match', [
    (dict(mixture='{d0}:1,{d1}'), 'data.mixture wants DIR:WEIGHT'),
    (dict(mixture='{d0}:0'), 'positive weights'),
    (dict(prepared='{d0}', mixture='{d0}:1'), 'not both'),
    (dict(prepared='{root}/missing'), 'no prepared dataset in .*missing.*manifest.json is missing'),
    (dict(prepared='{d0}', tokenizer='{other}'), r"is not the prepared dataset's tokenizer"),
])
def test_bad_dataset_settings(two_datasets, tmp_path, overrides, match):
  root, _, (d0, d1) = two_datasets
  other = write_hf_tokenizer(tmp_path / 'other.json', vocab_size=280)
  cfg = _cfg(**{k: v.format(d0=d0, d1=d1, root=root, other=other) for k, v in overrides.items()})
  with pytest.raises(UserError, match=match):
    dataset.open_run_data(cfg, str(tmp_path / 'w'))


def test_damaged_datasets_are_named(two_datasets, tmp_path):
  _, _, (d0, _) = two_datasets
  d = str(tmp_path / 'd')
  shutil.copytree(d0, d)
  shard = os.path.join(d, 'train-00000-of-00001.array_record')
  with open(shard, 'r+b') as f:
    f.truncate(100)
  with pytest.raises(UserError, match='shard .*train-00000-of-00001.array_record is truncated'):
    dataset.open_run_data(_cfg(prepared=d), str(tmp_path / 'w'))
  os.remove(shard)
  with pytest.raises(UserError, match='shard .*train-00000-of-00001.array_record is missing'):
    dataset.open_run_data(_cfg(prepared=d), str(tmp_path / 'w'))
  with open(os.path.join(d, 'manifest.json'), 'w') as f:
    f.write('{"version": 1, ')
  with pytest.raises(UserError, match='manifest.json is corrupt'):
    dataset.open_run_data(_cfg(prepared=d), str(tmp_path / 'w'))
  with open(os.path.join(d, 'manifest.json'), 'w') as f:
    f.write('{"version": 1, "dtype": "<u2", "tokenizer": {"file": "tokenizer.json"}}')
  with pytest.raises(UserError, match=r'manifest.json is corrupt \(missing record_tokens, splits, '
                                      r'tokenizer.sha256, splits.train, splits.validation\)'):
    dataset.open_run_data(_cfg(prepared=d), str(tmp_path / 'w'))


def test_checkpoint_refuses_another_tokenizer(two_datasets, tmp_path):
  _, tok, (d0, _) = two_datasets
  run = dataset.open_run_data(_cfg(prepared=d0), str(tmp_path / 'w'))
  meta = run_record.run_meta(ml_collections.ConfigDict({'a': 1}), 384, run.tokenizer)
  run_record.check_tokenizer(meta, run.tokenizer.sha256, 7)
  other = dataset.open_run_data(_cfg(), str(tmp_path / 'w2')).tokenizer
  with pytest.raises(UserError, match=f'step 7 was trained with tokenizer sha256 {run.tokenizer.sha256}, '
                                      f".*tokenizer is sha256 {other.sha256}"):
    run_record.check_tokenizer(meta, other.sha256, 7)


def _raise_count(dataset_dir, key, by):
  """Rewrites the manifest with the first train shard's `key` raised: valid JSON that lies."""
  path = os.path.join(dataset_dir, 'manifest.json')
  with open(path) as f:
    m = json.load(f)
  entry = m['splits']['train']['shards'][0]
  entry[key] += by
  with open(path, 'w') as f:
    json.dump(m, f)
  return entry


@pytest.mark.parametrize('key', ['tokens', 'records'])
def test_a_manifest_that_lies_about_a_shard_is_refused_when_opened(two_datasets, tmp_path, key):
  _, _, (d0, _) = two_datasets
  d = str(tmp_path / 'd')
  shutil.copytree(d0, d)
  entry = _raise_count(d, key, 22)
  records, tokens = entry['records'] - (key == 'records') * 22, entry['tokens'] - (key == 'tokens') * 22
  with pytest.raises(UserError, match=f'shard .*train-00000-of-00001.array_record holds {records} records '
                                      f'of {tokens} tokens, but the manifest says {entry["records"]} '
                                      f'records of {entry["tokens"]} tokens'):
    dataset.open_run_data(_cfg(prepared=d), str(tmp_path / 'w'))


@pytest.mark.slow
def test_training_on_a_lying_manifest_stops_before_writing(two_datasets, tmp_path):
  _, _, (d0, _) = two_datasets
  d = str(tmp_path / 'd')
  shutil.copytree(d0, d)
  entry = _raise_count(d, 'tokens', 22)
  code, _, err = run_main(*FAST, f'--config.data.prepared={d}',
                          workdir=tmp_path / 'w')
  assert code == 2, err
  assert len([line for line in err.splitlines() if line.startswith('error: ')]) == 1
  assert re.fullmatch(f'error: shard .*train-00000-of-00001.array_record holds .* tokens, but the '
                      f'manifest says .* of {entry["tokens"]} tokens; prepare the dataset again',
                      error_line(err)), err
  assert not (tmp_path / 'w').exists()  # no metrics, no checkpoints, no workdir


def test_data_validation_is_a_whole_dataset_of_the_same_tokenizer(two_datasets, tmp_path):
  root, _, (d0, d1) = two_datasets
  run = dataset.open_run_data(_cfg(prepared=d0, validation=d1), str(tmp_path / 'w'))
  splits = [pipeline.Windows(d1, run.validation_manifest, s, 32) for s in ('train', 'validation')]
  assert len(run.validation(32)) == sum(map(len, splits)) and min(map(len, splits)) > 0
  assert run.validation(32)[0].tolist() == splits[0][0].tolist()
  assert run.validation(32)[len(splits[0])].tolist() == splits[1][0].tolist()
  with pytest.raises(UserError, match='data.validation=.*d0 is a dataset this run trains on'):
    dataset.open_run_data(_cfg(mixture=f'{d1}:1,{d0}:1', validation=d0), str(tmp_path / 'w'))
  other_tok = write_hf_tokenizer(tmp_path / 'other.json', vocab_size=280)
  other = build.run(build.Options(inputs=str(root / '1.jsonl'), output=str(tmp_path / 'other'),
                                      tokenizer=other_tok), log=lambda _: None)
  with pytest.raises(UserError, match=f'data.validation=.*other was prepared with tokenizer sha256 '
                                      f'{other["tokenizer"]["sha256"]}, the training data with '
                                      f'{run.tokenizer.sha256}'):
    dataset.open_run_data(_cfg(prepared=d0, validation=str(tmp_path / 'other')), str(tmp_path / 'w'))


def test_no_validation_split_only_when_prepared_without_one(two_datasets, tmp_path):
  root, tok, (d0, _) = two_datasets
  assert dataset.open_run_data(_cfg(prepared=d0), str(tmp_path / 'w')).validation(32) is not None
  for fraction in (0.0, 0.01):  # 0.01 of these two documents is none of them: a split, too small
    out = str(tmp_path / f'd{fraction}')
    (tmp_path / 'two.jsonl').write_text('{"text": "In the beginning"}\n{"text": "God created"}\n')
    m = build.run(build.Options(inputs=str(tmp_path / 'two.jsonl'), output=out, tokenizer=tok,
                                    validation_fraction=fraction), log=lambda _: None)
    assert m['splits']['validation']['tokens'] == 0
    run = dataset.open_run_data(_cfg(prepared=out), str(tmp_path / 'w'))
    if fraction == 0.0:
      assert run.validation(32) is None
      assert 'prepared without a validation split' in run.no_validation_reason()
    else:
      with pytest.raises(UserError, match=r'validation split too small: .*\(validation\) has 0 tokens'):
        pipeline.eval_batches(run.validation(32), 4, 1)
