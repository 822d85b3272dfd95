"""The step benchmarks as a user runs them: tiny configs, one step (checks the scripts, not the speed)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, script_module
from tokenformer_jax.runtime import gpu_aot

SMALL = ['--config.train.batch_size=4', '--config.data.seq_len=32']


def _run(args, **env):
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, **env))


@pytest.mark.slow
def test_step_benchmark_writes_both_kinds(tmp_path):
  out = tmp_path / 'step.json'
  proc = _run([sys.executable, 'benchmarks/step.py', '--config=experiments/tiny.py', '--steps=3',
               '--warmup=0', '--peak_size=256', *SMALL, f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())['results']
  assert [r['kind'] for r in results] == ['tokenformer', 'dense']
  # equal non-embedding parameters, so equal model FLOPs per step
  assert results[0]['nonembedding_params_M'] == pytest.approx(results[1]['nonembedding_params_M'])
  assert results[0]['gflop_per_step'] == pytest.approx(results[1]['gflop_per_step'])
  assert results[0]['attention_impl'] == 'softmax_vjp' and results[0]['step_s'] > 0
  assert 'TokenFormer / dense step time' in proc.stdout
  # the training loop's bookkeeping, timed on the library's own calls, against the step it rides on
  for r in results:
    assert r['instrumentation_us_per_step'] > 0
    assert r['instrumentation_share'] == pytest.approx(r['instrumentation_us_per_step'] / 1e6 / r['step_s'])
  # the ratio round by round: quartiles around the median, over every timed round
  over = results[0]['over_dense']
  assert over['rounds'] == 3 and 0 < over['q1'] <= over['median'] <= over['q3']
  times = results[0]['step_s'] / results[1]['step_s']
  assert over['of_medians'] == pytest.approx(times)
  # MFU against the best of the peaks measured before and after the config
  machine = json.loads(out.read_text())['machine']
  assert len(machine['matmul_peak_measurements_gflops']) == 2
  assert machine['matmul_peak_gflops'] == max(machine['matmul_peak_measurements_gflops'])
  for r in results:
    assert r['mfu'] == pytest.approx(r['gflops_per_s'] / machine['matmul_peak_gflops'])


def _probe_wheel(folder):
  """A minimal pure-Python wheel, as `pip download` would leave one in WHEELS."""
  import zipfile
  folder.mkdir()
  info = 'gpu_step_probe-1.0.dist-info'
  with zipfile.ZipFile(folder / 'gpu_step_probe-1.0-py3-none-any.whl', 'w') as whl:
    whl.writestr('gpu_step_probe.py', 'VALUE = 1\n')
    whl.writestr(f'{info}/METADATA', 'Metadata-Version: 2.1\nName: gpu_step_probe\nVersion: 1.0\n')
    whl.writestr(f'{info}/WHEEL',
                 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n')
    whl.writestr(f'{info}/RECORD', f'gpu_step_probe.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n'
                 f'{info}/RECORD,,\n')
  return folder


@pytest.mark.slow
def test_gpu_script_runs_an_experiment_file_anywhere(tmp_path):
  out = tmp_path / 'gpu.json'
  proc = _run(['bash', 'benchmarks/gpu_step.sh', '--steps=1', '--warmup=0', '--peak_size=256'],
              CONFIG='experiments/tiny.py', BATCH='4', OUT=str(out), COST_STEPS='1',
              PYTHON=sys.executable, WHEELS=str(_probe_wheel(tmp_path / 'wheels')))
  assert proc.returncode == 0, proc.stderr[-3000:]
  (result,) = json.loads(out.read_text())['results']
  _cost_rows(tmp_path / 'gpu_pattention.json')   # and the fused-kernel profile
  assert result['dtype'] == 'bfloat16' and result['remat'] == 'none' and 'mfu_spec' in result
  assert 'not gpu' in proc.stderr     # says plainly that these are not GPU figures
  # the offline wheels were installed and put first on the path of every step
  assert 'from WHEELS: gpu_step_probe 1.0' in proc.stdout


@pytest.mark.slow
def test_gpu_script_refuses_an_empty_wheel_folder(tmp_path):
  (tmp_path / 'wheels').mkdir()
  proc = _run(['bash', 'benchmarks/gpu_step.sh'], PYTHON=sys.executable,
              WHEELS=str(tmp_path / 'wheels'), OUT=str(tmp_path / 'gpu.json'))
  assert proc.returncode == 2 and 'holds no .whl files' in proc.stderr
  assert not (tmp_path / 'gpu.json').exists()


@pytest.mark.slow
def test_gpu_script_checks_the_step_for_a_gpu_first(tmp_path):
  """CHECK=TOPOLOGY compiles instead of running: a bad topology is the compile mode's own error."""
  out = tmp_path / 'gpu.json'
  proc = _run(['bash', 'benchmarks/gpu_step.sh'], CHECK='h100:9x', PYTHON=sys.executable, OUT=str(out))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and lines[-1].startswith("error: unknown or malformed --topology='h100:9x'")
  assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not gpu_aot.cudnn_loadable(),
                    reason="needs JAX's CUDA plugin (pip install -e '.[gpu-compile]') and cuDNN "
                           "(pip install --no-deps 'nvidia-cudnn-cu12>=9.8,<10')")
def test_gpu_script_check_compiles_the_same_step_for_an_h100():
  proc = _run(['bash', 'benchmarks/gpu_step.sh'], CHECK='h100:1', CONFIG='experiments/tiny.py', BATCH='4',
              REMAT='block', PYTHON=sys.executable)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'h100:1 (NVIDIA H100 80GB HBM3, 1 device)' in proc.stdout
  assert 'batch 4 x 128 tokens' in proc.stdout and 'bfloat16, remat block' in proc.stdout
  assert 'attention     cudnn' in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not gpu_aot.compiler_installed(),
                    reason="needs JAX's CUDA plugin (pip install -e '.[gpu-compile]')")
def test_gpu_fit_finds_the_least_grad_accum(tmp_path):
  """tiny's 16 sequences over 2 hosts of 8 H100: one per device, so one compile answers."""
  out = tmp_path / 'fit.json'
  proc = _run([sys.executable, 'benchmarks/gpu_fit.py', '--configs=experiments/tiny.py',
               '--topologies=h100:2x8', f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  (row,) = json.loads(out.read_text())['rows']
  assert (row['micro_batch_per_device'], row['grad_accum'], row['fits']) == (1, 1, True)
  assert row['device_kind'] == 'NVIDIA H100 80GB HBM3' and 0 < row['total_gib'] < row['budget_gib']
  assert '| tiny.py | h100:2x8 | 1 (1) | ' in proc.stdout and '(one micro-batch already)' in proc.stdout


@pytest.mark.slow
def test_gpu_fit_table_from_saved_rows(tmp_path):
  """The table of a saved run: per pair the largest micro-batch that fits, and the next one up."""
  row = lambda micro, total: {'config': 'experiments/pile.py:1.5b', 'topology': 'h100:8',
                              'micro_batch_per_device': micro, 'grad_accum': 128 // micro,
                              'total_gib': total, 'budget_gib': 59.39, 'fits': total <= 59.39, 'wall_s': 30.0}
  saved = tmp_path / 'fit.json'
  saved.write_text(json.dumps({'rows': [row(1, 5.2), row(2, 5.7), row(64, 56.8), row(128, 109.1)]}))
  proc = _run([sys.executable, 'benchmarks/gpu_fit.py', f'--table_from={saved}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ('| pile.py:1.5b | h100:8 | 2 (64) | 56.80 (96%) | 109.10 (184%): does not fit | 30 |'
          in proc.stdout.splitlines())


@pytest.mark.slow
@pytest.mark.parametrize('args, message', [
    (['--config=experiments/huge.py'], 'cannot load --config'),
    ([], '--config is required'),
    (['--config=experiments/bench.py:huge'], "unknown benchmark shape 'huge'"),
    (['--config=experiments/tiny.py', '--config.model.d_modle=3'], 'unknown key d_modle'),
    (['--config=experiments/tiny.py', '--config.model.d_model=wide'], 'd_model'),
    (['--config=experiments/tiny.py', '--config.model.num_heads=3'], 'does not divide'),
])
def test_step_benchmark_bad_input(args, message):
  proc = _run([sys.executable, 'benchmarks/step.py', *args])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and lines[-1].startswith('error: ') and message in lines[-1], proc.stderr


@pytest.mark.parametrize('spec', ['experiments/tiny.py', 'experiments/bench.py:b', 'experiments/bench.py:m20',
                                  'experiments/progressive.py:354m'])
def test_dense_baseline_has_equal_nonembedding_params(spec):
  harness = script_module('benchmarks/harness.py')
  from tokenformer_jax.config import load_experiment
  from tokenformer_jax.model.transformer import nonembedding_params
  cfg = load_experiment(spec)
  tf, dense = harness.of_kind(cfg, 'tokenformer'), harness.of_kind(cfg, 'dense')
  assert dense.model.kind == 'dense' and dense.model.mlp_dim > 0
  assert nonembedding_params(tf.model) == nonembedding_params(dense.model)


@pytest.mark.slow
def test_torch_reference_computes_our_loss(tmp_path):
  pytest.importorskip('torch')
  out = tmp_path / 'torch.json'
  proc = _run([sys.executable, 'benchmarks/torch_reference.py', '--config=experiments/tiny.py',
               '--steps=1', '--warmup=0', '--nocompile', f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = json.loads(out.read_text())
  ours, result = data['results']
  assert (ours['impl'], result['impl']) == ('tokenformer_jax', 'pytorch eager')
  machine = data['machine']
  assert machine['matmul_peak_gflops'] == max(machine['matmul_peak_measurements_gflops'])
  assert ours['mfu'] == pytest.approx(ours['gflops_per_s'] / machine['matmul_peak_gflops'])
  assert result['first_loss'] == pytest.approx(result['jax_first_loss'], rel=1e-4)
  assert ours['step_s'] > 0 and 'PyTorch eager / tokenformer_jax step time' in proc.stdout


_COST_SMALL = ['--config=experiments/tiny.py', '--config.train.batch_size=2', '--config.data.seq_len=32',
               '--steps=1']


def _cost_rows(out):
  data = json.loads(out.read_text())
  rows = {(r['layer'], r['variant'], r['mode']): r for r in data['rows']}
  assert set(rows) == {(layer, variant, mode) for layer in ('qkv', 'ffn')
                       for variant in ('pattention', 'gelu_mlp', 'matmuls') for mode in ('fwd', 'fwd+bwd')}
  return data, rows


@pytest.mark.slow
def test_pattention_cost_times_the_three_variants_here(tmp_path):
  out = tmp_path / 'cost.json'
  proc = _run([sys.executable, 'benchmarks/pattention_cost.py', *_COST_SMALL, f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  data, rows = _cost_rows(out)
  assert data['timing'] == 'measured_s' and all(r['measured_s'] > 0 for r in rows.values())
  # n_qkv == n_proj: the qkv shape stands for all four attention projections
  assert rows['qkv', 'matmuls', 'fwd']['per_block'] == 4 and rows['ffn', 'matmuls', 'fwd']['n'] == 512
  assert set(data['block']) == {'fwd', 'fwd+bwd'} and 'block fwd+bwd: Pattention / GELU MLP' in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec('libtpu') is None, reason='libtpu is not installed')
def test_pattention_cost_reads_the_tpu_cost_model(tmp_path):
  out = tmp_path / 'cost.json'
  proc = _run([sys.executable, 'benchmarks/pattention_cost.py', *_COST_SMALL, '--dtype=bfloat16',
               '--topology=v5p:1x1x1', f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  data, rows = _cost_rows(out)
  assert data['timing'] == 'model_s' and all(r['model_s'] > 0 for r in rows.values())
  # GELU costs transcendentals, the norm more of them in the backward; bare matmuls none
  ffn = {v: rows['ffn', v, 'fwd+bwd']['transcendentals'] for v in ('pattention', 'gelu_mlp', 'matmuls')}
  assert ffn['pattention'] > ffn['gelu_mlp'] > ffn['matmuls'] == 0
  assert 'XLA:TPU cost model' in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize('args, message', [
    (['--config=huge.py'], 'cannot load --config'),
    (['--config=experiments/tiny.py', '--topology=v9:2x2'], 'unknown or malformed --topology'),
])
def test_pattention_cost_bad_input(args, message):
  proc = _run([sys.executable, 'benchmarks/pattention_cost.py', *args])
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_data_benchmark_measures_prepare_and_pipeline(tmp_path):
  out = tmp_path / 'data.json'
  proc = _run([sys.executable, 'benchmarks/data.py', '--sizes_mb=0.2,0.4', '--pipeline_seconds=0.5',
               '--seq_len=64', '--batch_size=4', f'--root={tmp_path / "scratch"}', f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  rows = results['prepare']
  assert {(r['corpus_MB'], r['tokenizer'], r['workers']) for r in rows} == {
      (0.2, 'sentencepiece', 1), (0.2, 'tokenizer.json', 1), (0.4, 'sentencepiece', 1),
      (0.4, 'sentencepiece', 2), (0.4, 'tokenizer.json', 1), (0.4, 'tokenizer.json', 2)}
  assert all(r['tokens'] > 1000 and r['tokens_per_s'] > 0 and r['peak_rss_MiB'] > 0 for r in rows)
  assert [r['corpus_MB'] for r in results['pipeline']] == [0.2, 0.4]
  assert all(r['tokens_per_s'] > 0 and r['batches'] > 0 for r in results['pipeline'])
  assert results['prepare_rss_ratio'] > 0 and results['pipeline_rss_ratio'] > 0


@pytest.mark.slow
def test_checkpoint_stall_benchmark_times_sync_and_async_saves(tmp_path):
  out = tmp_path / 'stall.json'
  proc = _run([sys.executable, 'benchmarks/checkpoint_stall.py', '--rounds=2', '--num_layers=1',
               '--d_model=64', '--seq_len=16', f'--workdir={tmp_path / "w"}', f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert len(result['per_round']) == 2 and result['sync_stall_s'] > 0 and result['async_call_s'] > 0
  assert result['async_stall_s'] >= result['async_call_s']
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_digest_cost_benchmark_times_saves_and_restores_with_and_without_digests(tmp_path):
  out = tmp_path / 'digests.json'
  proc = _run([sys.executable, 'benchmarks/digest_cost.py', '--rounds=1', '--num_layers=1', '--d_model=64',
               f'--workdir={tmp_path / "w"}', f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads(out.read_text())['results']
  assert [r['model'] for r in results] == ['tiny', 'large']
  for r in results:
    assert min(r['digest_first_s'], r['digest_s'], r['save_s'], r['save_plain_s'], r['restore_s'],
               r['restore_plain_s'], r['async_call_s'], r['async_call_plain_s']) > 0
    assert r['save_added_s'] == pytest.approx(r['save_s'] - r['save_plain_s'])
  assert not (tmp_path / 'w').exists()


_STAND_IN_REFERENCE = '''
"""Stands in for the reference's tools/datasets/preprocess_data.py: ids and end-of-text, uint16 .bin."""
import argparse, json
import numpy as np
import tokenizers
parser = argparse.ArgumentParser()
for name in ('--input', '--output-prefix', '--tokenizer-type', '--vocab-file', '--workers'):
  parser.add_argument(name)
parser.add_argument('--append-eod', action='store_true')
args = parser.parse_args()
tok = tokenizers.Tokenizer.from_file(args.vocab_file)
with open(args.output_prefix + '_text_document.bin', 'wb') as out:
  for path in args.input.split(','):
    for line in open(path, encoding='utf-8'):
      ids = tok.encode(json.loads(line)['text']).ids + [tok.token_to_id('<|endoftext|>')]
      out.write(np.array(ids, np.uint16).tobytes())
'''


@pytest.mark.slow
def test_prepare_speed_compares_token_streams_and_measures_process_trees(tmp_path):
  from tests.helpers import write_hf_tokenizer
  script = tmp_path / 'reference' / 'tools' / 'datasets' / 'preprocess_data.py'
  script.parent.mkdir(parents=True)
  script.write_text(_STAND_IN_REFERENCE)
  tok = write_hf_tokenizer(tmp_path / 'tokenizer.json')
  out = tmp_path / 'speed.json'
  args = [sys.executable, 'benchmarks/prepare_speed.py', f'--reference={tmp_path / "reference"}',
          f'--tokenizer={tok}', '--mb=0.05', '--files=2', '--repeats=1', '--workers=2',
          '--modes=threads', '--noin_process', '--noceiling', f'--root={tmp_path / "scratch"}',
          f'--python={sys.executable}']
  proc = _run([*args, '--scaling_pairs=1', f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results['same_token_stream'] and results['tokens'] > 1000
  assert {r['tool'] for r in results['runs']} == {'reference', 'ours (threads)', 'ours, paired'}
  assert sorted(r['workers'] for r in results['runs'] if r['tool'] == 'ours, paired') == [1, 2]
  pairs = results['scaling_pairs']
  assert len(pairs['2 workers / 1, each pair']) == 1 and pairs['median'] > 0
  for r in results['runs']:
    assert r['wall_s'] > 0 and r['cpu_s'] > 0 and r['peak_rss_sum_MiB'] > 20 and r['processes']
  assert set(results['ratios']) == {'ours (threads) / reference, 2 workers'}
  # a reference that writes other tokens is caught
  script.write_text(_STAND_IN_REFERENCE.replace('[tok.token_to_id', '[1, tok.token_to_id'))
  proc = _run([*args, '--scaling_pairs=0'])
  assert proc.returncode != 0 and 'the token streams differ' in proc.stderr + proc.stdout


_FAN_OUT = '''
import multiprocessing, subprocess, sys, time
def work(_):
  block = bytearray(64 << 20)  # touched: 64 MiB resident in each worker
  end = time.process_time() + 0.3
  while time.process_time() < end:
    pass
  return len(block)
if __name__ == '__main__':
  # an orphan: outlives this process, is reaped by the measuring process and counted there
  subprocess.Popen([sys.executable, '-c', 'import time\\nend = time.process_time() + 0.3\\n'
                    'while time.process_time() < end: pass'])
  with multiprocessing.get_context('spawn').Pool(2) as pool:
    print(sum(pool.map(work, range(2))))
'''


@pytest.mark.slow
def test_process_tree_sums_every_process(tmp_path):
  script = tmp_path / 'fan_out.py'
  script.write_text(_FAN_OUT)
  code = ('import importlib.util, json, sys\n'   # the script by its path, as the tests load scripts
          'spec = importlib.util.spec_from_file_location("process_tree", sys.argv[2])\n'
          'process_tree = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(process_tree)\n'
          'process_tree.become_subreaper()\nprint(json.dumps(process_tree.run([sys.executable, sys.argv[1]])))')
  proc = _run([sys.executable, '-c', code, str(script), os.path.join(ROOT, 'benchmarks', 'process_tree.py')])
  assert proc.returncode == 0, proc.stderr[-2000:]
  r = json.loads(proc.stdout)
  assert r['peak_rss_sum_MiB'] > 2 * 64 and len(r['processes']) >= 4
  assert r['cpu_s'] >= 0.85  # two workers and the orphan, 0.3 s each


@pytest.mark.slow
def test_prepare_profile_splits_a_workers_time(tmp_path):
  from tests.helpers import write_hf_tokenizer
  data = tmp_path / 'in.jsonl'
  data.write_text(''.join(json.dumps({'text': f'{i}: In the beginning God created.'}) + '\n'
                          for i in range(200)))
  out = tmp_path / 'profile.json'
  proc = _run([sys.executable, 'benchmarks/prepare_profile.py', f'--input={data}',
               f'--tokenizer={write_hf_tokenizer(tmp_path / "tokenizer.json")}', f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  parts = json.loads(out.read_text())['parts']
  named = ('reading and JSON', 'tokenizer', 'Python around the tokenizer', 'writing', 'other')
  assert all(parts[k]['cpu_s'] >= 0 for k in named) and parts['tokenizer']['cpu_s'] > 0
  assert sum(parts[k]['wall_s'] for k in named) == pytest.approx(parts['total']['wall_s'])


@pytest.mark.slow
def test_prepare_start_times_whole_runs_and_their_phases(tmp_path):
  from tests.helpers import write_hf_tokenizer
  out = tmp_path / 'start.json'
  proc = _run([sys.executable, 'benchmarks/prepare_start.py', '--runs=1', f'--json={out}',
               f'--tokenizer={write_hf_tokenizer(tmp_path / "tokenizer.json")}'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads(out.read_text())
  assert sorted(r['workers'] for r in results['runs']) == [1, 2]
  assert all(r['wall_s'] > 0 and r['cpu_s'] > 0 for r in results['runs'])
  for phases in results['traced'].values():
    named = [k for k in phases if k not in ('other', 'total')]
    assert len(named) == 7 and all(phases[k] >= 0 for k in named), phases
    assert phases['importing Beam'] > 0 and phases['the shards'] > 0
    assert sum(phases[k] for k in (*named, 'other')) == pytest.approx(phases['total'])
  # on a given corpus, traced pairs only: the shards' own scaling
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  for k in range(4):
    (corpus / f'part{k}.jsonl').write_text(''.join(json.dumps({'text': f'line {i} of file {k}. ' * 40}) + '\n'
                                                   for i in range(300)))
  proc = _run([sys.executable, 'benchmarks/prepare_start.py', '--runs=0', '--traced=2', f'--json={out}',
               f'--corpus={corpus}/*.jsonl', f'--tokenizer={tmp_path / "tokenizer.json"}'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads(out.read_text())
  assert results['runs'] == [] and len(results['traced_pairs']) == 2
  for pair in results['traced_pairs']:  # each traced run prepares the corpus anew
    assert all(seconds > 0 for phases in pair.values() for name, seconds in phases.items() if name != 'other')
  scaling = results['shards, 2 workers / 1']
  assert len(scaling['each pair']) == 2 and all(x > 0 for x in scaling['each pair'])


def test_encoder_exactness_counts_the_same_and_the_left_texts(tmp_path):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from tokenformer_jax.data import sources
  tok = Tokenizer(models.BPE())  # a byte-level BPE of 1,000 ids: enough merges for pairs that join
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(sources.kjv_documents()[:3], trainers.BpeTrainer(
      vocab_size=1000, special_tokens=['<|endoftext|>'], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  tok.save(str(tmp_path / 'tokenizer.json'))
  out = tmp_path / 'exactness.json'
  proc = _run([sys.executable, 'benchmarks/encoder_exactness.py', f'--tokenizer={tmp_path / "tokenizer.json"}',
               '--strings=300', '--documents=20', f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  r = json.loads(out.read_text())
  for name in ('random strings', 'local documents'):
    assert r[name]['different'] == 0 and r[name]['same'] > 0
    assert r[name]['same'] + r[name]['left to the tokenizer'] == r[name]['texts']
  assert r['local documents']['texts'] == 20 and r['random strings']['texts'] == 300
  assert r['random strings']['left to the tokenizer'] == 0  # no normalizer to disagree with
  pairs = r['merge pairs']
  assert pairs['pairs'] > 0 and pairs['different'] == 0 and pairs['same'] == pairs['texts'] > 0
