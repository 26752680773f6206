"""Long work as plain generators that yield progress.

The engine writes every long loop (the random walks, the cheap stages after
the networks) as a generator that yields a :class:`Step` after each unit of
work and *returns* its result. Scripts run it to the end with
:func:`run_steps`; the command line draws a progress bar from the steps; the
napari plugin wraps the generator in a thread worker, so a Cancel takes
effect at the next step (the pattern of stardist-napari).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Step", "StepGenerator", "run_steps"]

R = TypeVar("R")


@dataclass(frozen=True)
class Step:
    """One unit of long work done: ``done`` of ``total`` in ``stage``.

    ``total`` may grow while the work runs (e.g. windows of the instance
    walk that are walked again); 0 means "no count", a stage boundary.
    """

    stage: str
    done: int = 0
    total: int = 0


StepGenerator = Generator[Step, None, R]


def run_steps(steps: Generator[Step, None, R], on_step: Callable[[Step], None] | None = None) -> R:
    """Run a step generator to the end and return its result.

    ``on_step`` is called with every :class:`Step`; it may raise (e.g.
    :class:`InterruptedError`) to stop the work at that step.
    """
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_step is not None:
            on_step(step)
