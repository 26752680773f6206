"""Reading the IRNet panel's chosen checkpoint in the background, for its classes and parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..params import Params
from .jobs import load_model
from .workers import start_worker, stop_worker

if TYPE_CHECKING:  # pragma: no cover
    from ..models.checkpoint import Model


def load_predicting_model(path: str) -> Model:
    """The checkpoint at ``path``, refused (CheckpointError) when it lacks a trained network prediction needs."""
    model = load_model(path)
    model.require("cam", "irn")
    return model


class ModelLoader:
    """Reads a checkpoint when it is chosen; keeps its classes and parameters.

    ``chosen()`` is the checkpoint chosen now (a load finishing for an
    earlier choice is ignored); ``loaded(model)`` and ``failed(exc)`` are
    called on the main thread.
    """

    def __init__(self, chosen: Callable[[], str], loaded: Callable[[Model], None], failed: Callable[[Exception], None]) -> None:
        self._chosen = chosen
        self._loaded = loaded
        self._failed = failed
        self.worker = None
        self._path: str | None = None
        self._params: dict[str, Params] = {}
        #: the classes of the checkpoint read last (those of the last Run, after one)
        self.model_classes: list[str] = []
        self.closed = False

    def load(self, path: str) -> None:
        """Read ``path`` in a worker."""
        self.worker = start_worker(
            load_predicting_model,
            path,
            _connect={
                "returned": lambda model, p=path: self._on_loaded(model, p),
                "errored": lambda exc, p=path: self._on_error(exc, p),
                "finished": lambda p=path: self._on_finished(p),
            },
        )
        self._path = path

    def params(self, path: str) -> Params:
        """Parameters of the checkpoint ``path`` once it has been read (never blocks; else the defaults)."""
        return self._params.get(str(path), Params())

    def _on_finished(self, path: str) -> None:
        if self._path == path:
            self.worker = None

    def _on_loaded(self, model: Model, path: str) -> None:
        if self.closed or path != self._chosen():
            return  # the panel is gone, or an older choice finished loading late
        self.model_classes = list(model.classes)
        self._params[str(path)] = model.params
        self._loaded(model)

    def _on_error(self, exc: Exception, path: str) -> None:
        if self.closed or path != self._chosen():
            return
        self.model_classes = []
        self._failed(exc)

    def close(self) -> None:
        self.closed = True
        stop_worker(self.worker)


def describe_model(model: Model) -> str:
    return f"checkpoint: {len(model.classes)} classes, backbone {model.backbone}; press Run"


__all__ = ["ModelLoader", "describe_model", "load_predicting_model"]
