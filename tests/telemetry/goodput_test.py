"""Goodput across restarts: steps trained again are badput 'redone', the rest of the running time
'other'; the idle time between runs is not counted."""
import json
import time

import pytest

from tests.helpers import small_config, train_small
from tokenformer_jax.telemetry import goodput
from tokenformer_jax.training import loop


def _window(step, steps, step_s, **buckets):
  return {'event': 'window', 'step': step, 'steps': steps, 'step_s': step_s,
          **{f'{b}_s': buckets.get(b, 0.0) for b in ('startup', 'data', 'eval', 'checkpoint', 'profile')}}


def test_steps_past_the_next_start_are_redone():
  records = [
      {'event': 'start', 'time': 0.0, 'step': 0},
      _window(10, 10, 10.0, startup=5.0),
      _window(20, 10, 10.0, checkpoint=1.0),   # saved at 20 ...
      _window(30, 10, 10.0),                   # ... killed after 30: steps 21-30 trained again
      {'event': 'start', 'time': 100.0, 'step': 20},
      _window(25, 5, 5.0, startup=4.0, data=0.5),
      {'event': 'start', 'time': 200.0, 'step': 15},   # rolled back: steps 16-25 trained again
      _window(30, 15, 15.0, eval=2.0),
  ]
  totals = goodput.account(records)
  # run 1 keeps 0-15 (15 s), run 2 keeps nothing (its 20-25 lie past the rollback), run 3 keeps all
  assert totals['productive'] == pytest.approx(15.0 + 15.0)
  assert totals['redone'] == pytest.approx(15.0 + 5.0)
  assert (totals['startup'], totals['data'], totals['eval'], totals['checkpoint']) == (9.0, 0.5, 2.0, 1.0)
  summary = goodput.summarize(totals, wall_s=100.0)
  assert summary['goodput'] == pytest.approx(0.30)
  assert summary['badput_redone'] == pytest.approx(0.20)
  assert summary['badput_other'] == pytest.approx(1 - 0.30 - 0.20 - 0.125)
  assert sum(v for k, v in summary.items() if k.startswith(('goodput', 'badput'))) == pytest.approx(1.0)
  line = goodput.describe(summary)
  assert line.startswith('goodput 30.0% of 0:01:40 running (badput: start-up 9.0%')
  assert 'redone 20.0%' in line


def test_the_idle_time_between_runs_is_not_running_time(tmp_path):
  records = [
      {'event': 'start', 'time': 0.0, 'step': 0},
      _window(10, 10, 8.0, startup=2.0),
      {'event': 'end', 'time': 12.0},           # ended (its last 2 s after the window: 'other')
      {'event': 'start', 'time': 3600.0, 'step': 10},   # an hour later
      _window(20, 10, 9.0, startup=1.0),        # killed after this window, at 3610 s
      {'event': 'start', 'time': 7200.0, 'step': 20},
      _window(30, 10, 10.0),
  ]
  for r, t in zip([r for r in records if r['event'] == 'window'], (10.0, 3610.0, 7210.0)):
    r['time'] = t
  assert goodput.running_seconds(records) == pytest.approx(12.0 + 10.0 + 10.0)
  assert goodput.running_seconds(records, now=7215.0) == pytest.approx(12.0 + 10.0 + 15.0)
  summary = goodput.summarize(goodput.account(records), goodput.running_seconds(records))
  assert summary['goodput'] == pytest.approx(27.0 / 32.0)
  assert summary['badput_other'] == pytest.approx(2.0 / 32.0)
  # a new start reads those records: its running time adds to theirs (not counted from the first start)
  base = time.time() - 8000.0   # the records above, shifted to end 2 hours ago
  (tmp_path / goodput.FILE).write_text(''.join(json.dumps({**r, 'time': r['time'] + base}) + '\n'
                                               for r in records))
  account = goodput.Goodput(str(tmp_path), 30, start_time=base + 7900.0)
  assert account.summary()['wall_s'] == pytest.approx(32.0 + time.time() - (base + 7900.0), abs=1.0)
  account.close()
  assert goodput.read_records(str(tmp_path))[-1]['event'] == 'end'


def test_a_half_written_record_is_skipped(tmp_path):
  (tmp_path / goodput.FILE).write_text(json.dumps({'event': 'start', 'time': 1.0, 'step': 0}) + '\n'
                                       + json.dumps(_window(5, 5, 2.0)) + '\n{"event": "win')
  assert [r['event'] for r in goodput.read_records(str(tmp_path))] == ['start', 'window']


@pytest.mark.slow
def test_a_resumed_run_accounts_for_both_starts_and_the_steps_it_redid(data_cache, tmp_path, capsys):
  # 8 steps saved at 4 and 8; the resume goes back to step 4, so steps 5-8 of the first run are redone
  train_small(tmp_path, data_cache, steps=8, log_every=2, checkpoint_every=4, eval_every=4)
  assert 'running (badput: ' in capsys.readouterr().out
  first = goodput.account(goodput.read_records(str(tmp_path)))
  c = small_config(data_cache)
  c.train.steps, c.train.log_every, c.train.checkpoint_every, c.train.eval_every = 8, 2, 4, 4
  loop.train(c, str(tmp_path), restore_step=4)
  records = goodput.read_records(str(tmp_path))
  assert [r['step'] for r in records if r['event'] == 'start'] == [0, 4]
  both = goodput.account(records)
  windows = [r for r in records if r['event'] == 'window']
  first_run = windows[:len(windows) // 2]
  redone = sum(r['step_s'] for r in first_run if r['step'] > 4)
  assert redone > 0 and both['redone'] == pytest.approx(redone)
  assert both['productive'] == pytest.approx(first['productive'] - redone
                                             + sum(r['step_s'] for r in windows[len(first_run):]))
  assert both['startup'] > first['startup'] > 0 and both['checkpoint'] > first['checkpoint'] > 0
  with open(tmp_path / 'metrics.jsonl') as f:
    last = [json.loads(line) for line in f][-1]
  assert 0 < last['goodput'] < 1 and last['badput_redone'] > 0
  with open(tmp_path / 'metrics.jsonl') as f:   # a CPU has no datasheet peak: no MFU is invented
    assert not any('mfu' in json.loads(line) for line in f)
