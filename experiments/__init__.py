"""Experiment files: each defines get_config() (optionally get_config(arg)) and may define get_sweep().

Load one with --config=experiments/<name>.py[:arg] (main.py, launch/sweep.py, the benchmarks), or with
tokenformer_jax.config.load_experiment in Python; they import each other and `common` as a package.
"""
