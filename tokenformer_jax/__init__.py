"""tokenformer_jax: train, grow and serve TokenFormer models with JAX and Flax NNX."""
