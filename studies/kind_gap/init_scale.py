"""How large each projection's output starts, TokenFormer against dense, at the kind-gap study's sizes
(studies/kind_gap/experiment.py) and value-init scales: the RMS of q and of the FFN's output for a
unit-RMS input (what the pre-norm hands each projection), from one freshly initialised block.

A Pattention's output is Σ_i Θ_i V_i over its n tokens, and the L2 norm makes Θ's scale independent of
the keys', so it starts at ≈ RMS(Θ)·√n·std(V); a linear layer's scales with its input weights too. So
at the same value std a TokenFormer's residual branches start several times larger than a dense model's.

  python studies/kind_gap/init_scale.py [--quick]
"""
import argparse

VALUE_SCALES = (1.0, 0.25, 0.0625)


def _experiment():
  """The study's experiment file (imported here, as jax is, so that --help answers at once)."""
  from tokenformer_jax import config as config_lib
  return config_lib.experiment_beside(__file__, 'experiment.py')


def output_rms(arm: str, value_scale: float) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from tokenformer_jax import config as config_lib
  from tokenformer_jax.model import transformer as model_lib
  m = config_lib.resolve_model(_experiment().get_config(arm).model, 'cpu')
  std = model_lib.wang_std(m.num_layers, m.d_model) * value_scale
  m.value_init_std = std
  block = model_lib.Block(m, rngs=nnx.Rngs(0))
  x_BxTxD = jax.random.normal(jax.random.key(1), (4, 64, m.d_model))
  def rms(y):
    return float(jnp.sqrt(jnp.mean(jnp.square(y))))
  return {'arm': arm, 'value_scale': value_scale, 'value_std': std, 'q_rms': rms(block.query(x_BxTxD)),
          'ffn_rms': rms(block.mlp(x_BxTxD))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help="the quick check's sizes")
  args = parser.parse_args()
  experiment = _experiment()
  scales = experiment.QUICK['scales'] if args.quick else experiment.SCALES
  print('| model | value std | q output RMS | FFN output RMS |\n|---|---|---|---|')
  for scale in scales:
    for kind in experiment.KINDS:
      for value_scale in VALUE_SCALES:
        r = output_rms(f'{kind}-x{scale}' + ('-quick' if args.quick else ''), value_scale)
        print(f"| {kind} {scale}× | {r['value_std']:.4f} (×{value_scale:g}) | {r['q_rms']:.3f} | "
              f"{r['ffn_rms']:.3f} |", flush=True)


if __name__ == '__main__':
  main()
