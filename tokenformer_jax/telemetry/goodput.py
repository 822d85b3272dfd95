"""Goodput: the share of a run's running time, over every start of it, spent in train steps whose
result the run kept.

Each start of a run appends to WORKDIR/goodput.jsonl a 'start' record (wall-clock time, the step it
resumed from), each log window a 'window' record (its last step, its step count and its seconds per
step_clock bucket), and its end an 'end' record. The running time is the sum over starts of the time
from the start to its end ('end' record; a killed run's last record): the idle time between one run's
end and the next start is nobody's loss and is not counted. From these records, a step trained and later
trained again (the run was interrupted after it, or rolled back with --restore_step, and resumed from an
earlier checkpoint) is badput 'redone'; start-up, waiting for data, evaluation, checkpoint saves and
profiling are badput of their own; 'other' is the rest of the running time (host work outside the loop,
such as the work after a run's last log window). What a killed run did after its last record is not
known and not counted. Only process 0 writes; a truncated last line (a killed run) is skipped when read.
"""
import datetime
import json
import os
import time

import jax

from tokenformer_jax.telemetry import metrics

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


def running_seconds(records: list[dict], now: float | None = None) -> float:
  """The seconds from each start to its end (its 'end' record, else its last record; for the last
  start `now`, when given): the time between one start's end and the next start is not counted."""
  total, began, last = 0.0, None, None
  for r in records:
    if r.get('event') == 'start':
      total += (last - began) if began is not None else 0.0
      began = r['time']
    last = r['time']
  if began is not None:
    total += (now if now is not None else last) - began
  return total


def summarize(totals: dict, wall_s: float) -> dict:
  """{'goodput', 'badput_<kind>' ...} as fractions of wall_s (the running time), plus 'wall_s' and
  'productive_s'."""
  accounted = sum(totals.values())
  seconds = {**{k: totals.get(k, 0.0) for k in BADPUT if k != 'other'},
             'other': max(wall_s - accounted, 0.0)}
  wall = max(wall_s, 1e-9)
  out = {'goodput': totals['productive'] / wall, 'wall_s': wall_s, 'productive_s': totals['productive']}
  out.update({f'badput_{kind}': s / wall for kind, s in seconds.items()})
  return out


def describe(summary: dict) -> str:
  """'goodput 91.2% of 0:03:12 running (badput: start-up 6.1%, ...)'."""
  wall = datetime.timedelta(seconds=round(summary['wall_s']))
  parts = ', '.join(f"{kind.replace('startup', 'start-up')} {summary[f'badput_{kind}']:.1%}"
                    for kind in BADPUT)
  return f"goodput {summary['goodput']:.1%} of {wall} running (badput: {parts})"


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
    self._start, self._earlier_s = now, running_seconds(earlier)
    self._totals = account(earlier + [start])   # this start decides which earlier steps were redone
    self._append(start)

  def _append(self, record: dict) -> None:
    if self._writes:
      os.makedirs(os.path.dirname(self._path), exist_ok=True)
      with metrics.open_for_append(self._path) as f:
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
    return summarize(self._totals, self._earlier_s + time.time() - self._start)

  def close(self) -> None:
    """This start's 'end' record: its running time stops here (however the run ends, short of a kill)."""
    self._append({'event': 'end', 'time': time.time()})
