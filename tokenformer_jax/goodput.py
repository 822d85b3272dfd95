"""Goodput: the share of a run's wall time, since its first start and across every restart, spent in train
steps whose result the run kept.

Each start of a run appends to WORKDIR/goodput.jsonl a 'start' record (wall-clock time, the step it
resumed from), and each log window a 'window' record: its last step, its step count and its seconds per
step_clock bucket. From these records, a step trained and later trained again (the run was interrupted
after it, or rolled back with --restore_step, and resumed from an earlier checkpoint) is badput 'redone';
start-up, waiting for data, evaluation, checkpoint saves and profiling are badput of their own; 'other' is
the rest of the wall time: between runs, after the last record of a run that was killed, and host work
outside the loop. Only process 0 writes; a truncated last line (a killed run) is skipped when read.
"""
import datetime
import json
import os
import time

import jax

FILE = 'goodput.jsonl'
BADPUT = ('startup', 'data', 'eval', 'checkpoint', 'profile', 'redone', 'other')
_TIMED = ('startup', 'data', 'eval', 'checkpoint', 'profile')


def read_records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:   # the half-written line of a killed run
        continue
  return records


def account(records: list[dict]) -> dict:
  """Seconds per kind over the records: 'productive' (train steps kept), 'redone' (train steps that a
  later start trained again) and the timed badput buckets."""
  totals = dict.fromkeys(('productive', 'redone') + _TIMED, 0.0)
  starts = [i for i, r in enumerate(records) if r.get('event') == 'start']
  for n, first in enumerate(starts):
    last = starts[n + 1] if n + 1 < len(starts) else len(records)
    # steps past the earliest later start were trained again (or thrown away by a rollback)
    keep_through = min((records[i]['step'] for i in starts[n + 1:]), default=float('inf'))
    for r in records[first + 1:last]:
      if r.get('event') != 'window':
        continue
      for bucket in _TIMED:
        totals[bucket] += r.get(f'{bucket}_s', 0.0)
      if r['steps'] > 0:
        kept = min(max(keep_through - (r['step'] - r['steps']), 0), r['steps']) / r['steps']
        totals['productive'] += r['step_s'] * kept
        totals['redone'] += r['step_s'] * (1 - kept)
  return totals


def summarize(totals: dict, wall_s: float) -> dict:
  """{'goodput', 'badput_<kind>' ...} as fractions of wall_s, plus 'wall_s' and 'productive_s'."""
  accounted = sum(totals.values())
  seconds = {**{k: totals.get(k, 0.0) for k in BADPUT if k != 'other'},
             'other': max(wall_s - accounted, 0.0)}
  wall = max(wall_s, 1e-9)
  out = {'goodput': totals['productive'] / wall, 'wall_s': wall_s, 'productive_s': totals['productive']}
  out.update({f'badput_{kind}': s / wall for kind, s in seconds.items()})
  return out


def describe(summary: dict) -> str:
  """'goodput 91.2% of 0:03:12 since the first start (badput: start-up 6.1%, ...)'."""
  wall = datetime.timedelta(seconds=round(summary['wall_s']))
  parts = ', '.join(f"{kind.replace('startup', 'start-up')} {summary[f'badput_{kind}']:.1%}"
                    for kind in BADPUT)
  return f"goodput {summary['goodput']:.1%} of {wall} since the first start (badput: {parts})"


class Goodput:
  """The running account of one training process: earlier starts read once, this one's windows added."""

  def __init__(self, workdir: str, start_step: int, start_time: float | None = None,
               record: bool = True):
    # record=False: a run with no step left to train (a rerun of a finished one) leaves no trace
    self._writes = record and jax.process_index() == 0
    self._path = os.path.join(workdir, FILE)
    now = time.time() if start_time is None else start_time
    start = {'event': 'start', 'time': now, 'step': int(start_step)}
    earlier = read_records(workdir) if self._writes else []
    self._first_start = next((r['time'] for r in earlier if r.get('event') == 'start'), now)
    self._totals = account(earlier + [start])   # this start decides which earlier steps were redone
    self._append(start)

  def _append(self, record: dict) -> None:
    if self._writes:
      os.makedirs(os.path.dirname(self._path), exist_ok=True)
      with open(self._path, 'a', encoding='utf-8') as f:
        f.write(json.dumps(record) + '\n')

  def add_window(self, last_step: int, steps: int, times: dict) -> None:
    """One log window of this run (step_clock.close_window's record); its steps count as kept."""
    record = {'event': 'window', 'time': time.time(), 'step': int(last_step), 'steps': int(steps),
              'step_s': times['time_step_s'] if steps else 0.0,
              **{f'{b}_s': times[f'time_{b}_s'] for b in _TIMED}}
    self._append(record)
    for bucket in _TIMED:
      self._totals[bucket] += record[f'{bucket}_s']
    self._totals['productive'] += record['step_s']

  def summary(self) -> dict:
    return summarize(self._totals, time.time() - self._first_start)
