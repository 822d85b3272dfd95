"""The step benchmarks as a user runs them: tiny configs, one step (checks the scripts, not the speed)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import shapes  # noqa: E402


def _run(args, **env):
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, **env))


def test_step_benchmark_writes_both_kinds(tmp_path):
  out = tmp_path / 'step.json'
  proc = _run([sys.executable, 'benchmarks/step.py', '--configs=tiny', '--steps=1', '--warmup=0',
               '--peak_size=256', '--override=train.batch_size=4,data.seq_len=32', f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())['results']
  assert [r['kind'] for r in results] == ['tokenformer', 'dense']
  # equal non-embedding parameters, so equal model FLOPs per step
  assert results[0]['nonembedding_params_M'] == pytest.approx(results[1]['nonembedding_params_M'])
  assert results[0]['gflop_per_step'] == pytest.approx(results[1]['gflop_per_step'])
  assert results[0]['attention_impl'] == 'softmax_vjp' and results[0]['step_s'] > 0
  assert 'TokenFormer / dense step time' in proc.stdout


def test_gpu_script_runs_an_experiment_file_anywhere(tmp_path):
  out = tmp_path / 'gpu.json'
  proc = _run(['bash', 'benchmarks/gpu_step.sh', '--steps=1', '--warmup=0', '--peak_size=256'],
              CONFIG='experiments/tiny.py', BATCH='4', OUT=str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  (result,) = json.loads(out.read_text())['results']
  assert result['dtype'] == 'bfloat16' and result['remat'] == 'none' and 'mfu_spec' in result
  assert 'not gpu' in proc.stderr     # says plainly that these are not GPU figures


@pytest.mark.parametrize('args, message', [
    (['--configs=huge'], "unknown config 'huge'"),
    (['--configs=tiny', '--override=model.d_modle=3'], 'bad override'),
    (['--configs=tiny', '--override=model.d_model=wide'], 'bad override'),
])
def test_step_benchmark_bad_input(args, message):
  proc = _run([sys.executable, 'benchmarks/step.py', *args])
  assert proc.returncode == 2 and message in proc.stderr


def test_dense_baseline_has_equal_nonembedding_params():
  from tokenformer_jax.model import nonembedding_params
  for name in shapes.SHAPES:
    tf, dense = shapes.make_config(name, 'tokenformer'), shapes.make_config(name, 'dense')
    assert nonembedding_params(tf.model) == nonembedding_params(dense.model)


def test_torch_reference_computes_our_loss(tmp_path):
  pytest.importorskip('torch')
  out = tmp_path / 'torch.json'
  proc = _run([sys.executable, 'benchmarks/torch_reference.py', '--configs=tiny', '--steps=1',
               '--warmup=0', '--nocompile', f'--json={out}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  ours, result = json.loads(out.read_text())['results']
  assert (ours['impl'], result['impl']) == ('tokenformer_jax', 'pytorch eager')
  assert result['first_loss'] == pytest.approx(result['jax_first_loss'], rel=1e-4)
  assert ours['step_s'] > 0 and 'PyTorch eager / tokenformer_jax step time' in proc.stdout
