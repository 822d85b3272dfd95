"""Helpers for `get_sweep()` in experiment files, turning an override dict into flags and a run name,
and what launch/sweep.py collects (final metrics, the merged results.csv).

A sweep is a list of override dicts ({'optimizer.lr': 3e-4, 'model.n_ffn': 512}); each becomes one run
with `--config.optimizer.lr=0.0003 --config.model.n_ffn=512` (explicit flags: ml_collections does not
apply `--config.x=` overrides from a --flagfile).

  def get_sweep():
    return product(product(('optimizer.lr', [1e-3, 3e-3])), zipped(('model.n_qkv', [64, 128]),
                                                                  ('model.n_ffn', [256, 512])))
"""
import csv
import hashlib
import itertools
import json
import os
import re
import tempfile


def product(*axes) -> list[dict]:
  """Cartesian product of axes; an axis is (key, values) or an already-built list of dicts."""
  lists = [_as_dicts(axis) for axis in axes]
  return [dict(itertools.chain.from_iterable(d.items() for d in combo))
          for combo in itertools.product(*lists)]


def zipped(*axes) -> list[dict]:
  """Axes that move together (all of the same length)."""
  lists = [_as_dicts(axis) for axis in axes]
  if len({len(values) for values in lists}) > 1:
    raise ValueError(f'zipped axes differ in length: {[len(v) for v in lists]}')
  return [dict(itertools.chain.from_iterable(d.items() for d in combo)) for combo in zip(*lists)]


def _as_dicts(axis) -> list[dict]:
  if isinstance(axis, tuple) and len(axis) == 2 and isinstance(axis[0], str):
    key, values = axis
    return [{key: value} for value in values]
  return list(axis)


def flag_value(value) -> str:
  return repr(value) if isinstance(value, (tuple, list)) else str(value)


def to_flags(overrides: dict) -> list[str]:
  return [f'--config.{key}={flag_value(value)}' for key, value in overrides.items()]


def run_name(overrides: dict, base_flags=()) -> str:
  """A readable, filesystem-safe name that no other run of the sweep can share: the overrides
  ('optimizer.lr=0.003,model.n_ffn=512', cut to 80 characters) and a hash of everything that makes
  the run (all overrides and the flags every run gets), e.g. 'optimizer.lr=0.003,model.n_ffn=512-1f3a9c2e'."""
  text = ','.join(f'{key}={flag_value(value)}' for key, value in overrides.items()) or 'base'
  identity = json.dumps([[key, flag_value(value)] for key, value in overrides.items()] + list(base_flags))
  digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
  return f"{re.sub(r'[^A-Za-z0-9_.,=+-]', '_', text)[:80]}-{digest}"


def final_metrics(workdir: str) -> dict:
  """Last train loss, last validation loss/perplexity and goodput of a run (its last stage for
  schedules)."""
  out = {}
  paths = sorted((os.path.join(d, 'metrics.jsonl') for d, _, files in os.walk(workdir)
                  if 'metrics.jsonl' in files), key=_numeric_order)
  for path in paths:
    with open(path, encoding='utf-8') as f:
      for line in f:
        record = json.loads(line)
        if 'loss' in record:
          out.update(step=record['step'], train_loss=record['loss'])
        if 'val_loss' in record:
          out.update(val_step=record['step'], val_loss=record['val_loss'], val_ppl=record['val_ppl'])
        if 'goodput' in record:
          out['goodput'] = record['goodput']
  return out


def _numeric_order(path: str) -> list:
  """'stage_10' after 'stage_9': digit runs compare as numbers."""
  return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', path)]


def write_csv(root: str, rows: list[dict]) -> None:
  """Merges rows into ROOT/results.csv by run name (this invocation's rows win), atomically: a unique
  temporary file renamed over the old one, so concurrent sweeps never write into each other's."""
  path = os.path.join(root, 'results.csv')
  merged = {}
  if os.path.exists(path):
    with open(path, newline='', encoding='utf-8') as f:
      merged = {row['run']: row for row in csv.DictReader(f)}
  merged.update((row['run'], row) for row in rows)
  keys = sorted({k for row in merged.values() for k in row}, key=lambda k: (k not in ('run', 'status'), k))
  fd, tmp = tempfile.mkstemp(dir=root, prefix='.results.csv.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'w', newline='', encoding='utf-8') as f:
      writer = csv.DictWriter(f, fieldnames=keys)
      writer.writeheader()
      writer.writerows(merged.values())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
