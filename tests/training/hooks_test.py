"""The hook runner: hooks run in the order added, each when due; a stop set by one hook is seen by those
after it; `every` with the last step and a stop."""
from tokenformer_jax.training import hooks as hooks_lib


def _info(step, end=10):
  return hooks_lib.StepInfo(step=step, end=end, state=None, metrics={})


def test_every_counts_steps_done_and_adds_the_end_and_a_stop():
  due = hooks_lib.every(4, at_end=True, on_stop=True)
  assert [s for s in range(1, 11) if due(_info(s))] == [4, 8, 10]
  assert [s for s in range(1, 11) if hooks_lib.every(4)(_info(s))] == [4, 8]
  stopped = _info(5)
  stopped.stopping = True
  assert due(stopped) and not hooks_lib.every(4)(stopped)


def test_hooks_run_in_order_when_due_and_see_an_earlier_stop():
  ran = []
  hooks = hooks_lib.Hooks()
  hooks.before_step(lambda step: ran.append(('before', step)), lambda step: step == 2)
  hooks.add(lambda info: ran.append(('every', info.step)))
  hooks.add(lambda info: setattr(info, 'stopping', info.step == 3))
  hooks.add(lambda info: ran.append(('save', info.step)), hooks_lib.every(5, on_stop=True))
  hooks.at_end(lambda info: ran.append(('end', info.step)))
  for step in range(5):
    hooks.run_before(step)
    info = hooks.run_after(_info(step + 1))
    if info.stopping:
      break
  hooks.run_end(info)
  assert ran == [('every', 1), ('every', 2), ('before', 2), ('every', 3), ('save', 3), ('end', 3)]
