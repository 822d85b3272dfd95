"""peers.py's judgement of a round (which processes are live, which left an exit status), with a
stand-in client; the two-process runs themselves are in multiprocess_test.py."""
import pytest

from tokenformer_jax.runtime import peers


class _Client:
  def __init__(self, live, marks):
    self.live, self.marks, self.set = live, marks, {}

  def get_live_nodes(self, ids):
    return {i: 0 for i in ids if i in self.live}

  def key_value_dir_get(self, prefix):
    return [(f'{prefix}{j}', str(code)) for j, code in self.marks.items()]

  def key_value_set(self, key, value):
    self.set[key] = value


def judge(watch, client):
  ended = []
  watch._end = lambda who, why: ended.append((who, why))   # instead of ending the test process
  live, marks = watch._round()
  watch._judge({0, 1, 2} - {watch._me}, live, marks)
  return ended


def test_a_process_gone_without_an_exit_status_is_dead_at_once():
  client = _Client(live={0, 2}, marks={})
  [(who, why)] = judge(peers.PeerWatch(client, 0, 3, heartbeat_s=10), client)
  assert who == [1] and why.startswith('stopped answering (no heartbeat for 10 s')


@pytest.mark.parametrize('code', [0, 143, 130])
def test_a_process_that_finished_or_saved_and_stopped_is_no_alarm(code):
  client = _Client(live={0}, marks={1: code, 2: 0})
  assert judge(peers.PeerWatch(client, 0, 3, heartbeat_s=10), client) == []


def test_a_process_that_failed_is_given_the_heartbeat_timeout_to_be_followed(monkeypatch):
  client = _Client(live={0, 1}, marks={2: 1})
  watch = peers.PeerWatch(client, 1, 3, heartbeat_s=10)
  now = [100.0]
  monkeypatch.setattr(peers.time, 'monotonic', lambda: now[0])
  assert judge(watch, client) == []
  now[0] += 9
  assert judge(watch, client) == []
  now[0] += 1
  [(who, why)] = judge(watch, client)
  assert who == [2] and why.startswith('ended with status 1')


def test_leaving_leaves_the_exit_status_for_the_others():
  client = _Client(live={0, 1}, marks={})
  watch = peers.PeerWatch(client, 1, 2, heartbeat_s=10)
  watch.leave(143)   # the thread was never started: nothing to wait for
  assert client.set == {'tokenformer_jax/exit_status/1': '143'}
