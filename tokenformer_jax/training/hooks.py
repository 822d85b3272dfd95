"""Hooks: the actions a training loop runs around its steps, each when it is due, in the order added.

The loop itself only fetches a batch, runs the step and hands the result to the hooks, so a new periodic
action (a log window, an evaluation, a save) is a hook added beside the others, not an edit of the loop.
The order they are added in is the order they run in within a step, and it is part of what they mean
(training's: divergence is read before any save, the evaluation runs before the save: loop._add_hooks).
"""
import dataclasses
from typing import Any, Callable


@dataclasses.dataclass
class StepInfo:
  """What the hooks see after a step. A hook may set `stopping` (a stop was requested): the hooks after
  it see that, and the loop ends once this step's hooks have run."""
  step: int           # steps done: the state's step after this one
  end: int            # the step the loop trains until
  state: Any
  metrics: dict       # the step's metrics, still on the device
  stopping: bool = False


Due = Callable[[StepInfo], bool]


def every(n: int, at_end: bool = False, on_stop: bool = False) -> Due:
  """Due after every n-th step; also after the last (`at_end`) and after a step that stops (`on_stop`)."""
  def due(info: StepInfo) -> bool:
    return info.step % n == 0 or (at_end and info.step == info.end) or (on_stop and info.stopping)
  return due


def always(info: StepInfo) -> bool:
  del info
  return True


@dataclasses.dataclass(frozen=True)
class Hook:
  fn: Callable[[Any], None]
  due: Callable[[Any], bool]


class Hooks:
  """Hooks before a step (given the step's index), after it (given its StepInfo) and after the loop."""

  def __init__(self):
    self._before: list[Hook] = []
    self._after: list[Hook] = []
    self._end: list[Callable[[StepInfo], None]] = []

  def before_step(self, fn: Callable[[int], None], due: Callable[[int], bool]) -> None:
    self._before.append(Hook(fn, due))

  def add(self, fn: Callable[[StepInfo], None], due: Due = always) -> None:
    """fn(info) after each step where due(info) (evaluated when its turn comes)."""
    self._after.append(Hook(fn, due))

  def at_end(self, fn: Callable[[StepInfo], None]) -> None:
    self._end.append(fn)

  def run_before(self, step: int) -> None:
    for hook in self._before:
      if hook.due(step):
        hook.fn(step)

  def run_after(self, info: StepInfo) -> StepInfo:
    for hook in self._after:
      if hook.due(info):
        hook.fn(info)
    return info

  def run_end(self, info: StepInfo) -> None:
    for fn in self._end:
      fn(info)
