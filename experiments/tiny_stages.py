"""A three-stage growth schedule on the tiny model: 64 → 128 → 256 attention tokens (×4 FFN tokens).

python -m tokenformer_jax.main --config=experiments/tiny_stages.py --workdir=/tmp/stages
Each stage lives in WORKDIR/stage_<i>; rerunning the command continues where it stopped. Growth is
exact (new keys 0, τ frozen) and carries the optimizer state, so the step count goes on: 300 steps
per stage, 900 in all.
"""
import importlib.util
import os


def _tiny():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tiny.py')
  spec = importlib.util.spec_from_file_location('experiments_tiny', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  c = _tiny()
  c.stages = ((64, 64, 256, 300), (128, 128, 512, 300), (256, 256, 1024, 300))
  c.growth.policy = 'exact'
  c.growth.optimizer = 'carry'
  c.train.checkpoint_every = 100
  return c
