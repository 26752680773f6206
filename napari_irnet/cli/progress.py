"""Progress of the command line: a tqdm bar on a terminal, periodic lines in a log.

A cluster job or a redirected run writes to a file, where a bar shows nothing
(tqdm turns itself off) or a wall of carriage returns. There every
:class:`Progress` prints a plain line on the first step, then every
``$NAPARI_IRNET_PROGRESS_SECONDS`` seconds (default 30) and at the end, with
the count, the loss when there is one and the rate. Every command that shows
progress goes through here.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

#: seconds between two progress lines when the output is not a terminal
DEFAULT_EVERY = 30.0


def _every() -> float:
    try:
        return max(0.0, float(os.environ.get("NAPARI_IRNET_PROGRESS_SECONDS", DEFAULT_EVERY)))
    except ValueError:
        return DEFAULT_EVERY


def _is_main() -> bool:
    from ..training.distributed import is_main

    return is_main()


class Progress:
    """Count steps (or images) with a bar on a terminal and lines elsewhere.

    Parameters
    ----------
    total : int, optional
        The number of steps, when known.
    initial : int
        Where the count starts (a resumed run).
    stream : file, optional
        Where to write (default standard error); a terminal gets a bar.
    every : float, optional
        Seconds between lines off a terminal (default ``$NAPARI_IRNET_PROGRESS_SECONDS`` or 30).
    enabled : bool
        False writes nothing (e.g. the other processes under ``torchrun``).
    started : float, optional
        When the work began (``time.perf_counter()``), if before this object.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "step", initial: int = 0,
                 stream: IO[str] | None = None, every: float | None = None, enabled: bool = True,
                 started: float | None = None) -> None:  # fmt: skip
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start = initial
        self.stream = stream if stream is not None else sys.stderr
        self.every = _every() if every is None else every
        self.enabled = enabled
        self.postfix: dict[str, Any] = {}
        self._t0 = time.perf_counter() if started is None else started
        self._last_line: float | None = None
        self._printed_at: int | None = None
        self._bar = None
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream)

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count ``n`` more; ``postfix`` (e.g. ``loss=0.25``) is shown with the count."""
        self.n += n
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)
        elif self.enabled:
            now = time.perf_counter()
            if self._last_line is None or now - self._last_line >= self.every:
                self._line(now)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._printed_at != self.n and self.n > self._start:
            self._line(time.perf_counter())
        self.enabled = False

    def line(self) -> str:
        """The progress as one line: count, share, postfix, rate."""
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k} {_fmt(v)}" for k, v in self.postfix.items())
        seconds = time.perf_counter() - self._t0
        rate = (self.n - self._start) / seconds if seconds > 0 else 0.0
        rate_text = f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"
        minutes, secs = divmod(int(seconds), 60)
        return f"{self.desc}: {done} {self.unit}s{share}{extra}, {rate_text} {self.unit}s/s, {minutes // 60}:{minutes % 60:02d}:{secs:02d}"

    def _line(self, now: float) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last_line, self._printed_at = now, self.n

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def progress_iter(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "image") -> Iterator:
    """Yield from ``iterable``, counting each item (see :class:`Progress`)."""
    with Progress(total, desc, unit, enabled=_is_main()) as bar:
        for item in iterable:
            yield item
            bar.update(1)


class StepBars:
    """A :class:`Progress` per walk of the post-processing: pass as ``progress=`` of ``predict``.

    Stages without a count (seeds, clusters) are not shown; a walk's bar
    follows its steps (its total may grow: windows walked again).
    """

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.stage: str | None = None
        self.bar: Progress | None = None
        self.done = 0

    def __call__(self, step) -> None:
        if not step.total:
            return
        if step.stage != self.stage:
            self.close()
            self.stage, self.done = step.stage, 0
            self.bar = Progress(step.total, f"{self.desc}: {step.stage}", "step", enabled=_is_main())
        if step.total != self.bar.total:
            self.bar.set_total(step.total)
        self.bar.update(step.done - self.done)
        self.done = step.done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def track_training(records: Iterable[dict], desc: str) -> dict | None:
    """Run a training generator to its end, showing its steps and loss; returns the last record.

    Ends with one line on standard output, terminal or not: the steps, the
    time and the final loss.
    """
    bar, last = None, None
    main, started = _is_main(), time.perf_counter()
    try:
        for rec in records:
            if bar is None:  # a resumed run starts where the interrupted one stopped
                bar = Progress(rec.get("max_step"), desc, "step", initial=rec.get("resumed_from", 0), enabled=main, started=started)
            last = rec
            if rec.get("stopped"):
                break
            bar.update(1, **({"loss": float(rec["loss"])} if rec.get("loss") is not None else {}))
    finally:
        if bar is not None:
            bar.close()
    if main and last is not None and not last.get("stopped"):
        loss = f", final loss {float(last['loss']):.4f}" if last.get("loss") is not None else ""
        seconds = f" in {last['seconds']:.1f} s" if last.get("seconds") is not None else ""
        print(f"{desc}: {last.get('step', bar.n)} steps{seconds}{loss}", flush=True)
    return last
