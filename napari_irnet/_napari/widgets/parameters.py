"""The IRNet panel's live parameters: one slider per post-processing field of ``Params``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container, FloatSlider, FloatSpinBox, PushButton, Slider

from ...params import Params
from . import Section

#: the live parameters: Params field -> (widget class, min, max, step, label)
LIVE_PARAMS: dict[str, tuple[type, float, float, float, str]] = {
    "seed_fg_threshold": (FloatSlider, 0.0, 1.0, 0.01, "seed fg"),
    "seed_bg_threshold": (FloatSlider, 0.0, 1.0, 0.01, "seed bg"),
    "beta": (FloatSlider, 1.0, 30.0, 0.5, "β"),
    "walk_steps": (Slider, 0, 1024, 16, "walk steps"),
    "cluster_threshold": (FloatSlider, 0.1, 10.0, 0.1, "cluster thr."),
    "instance_bg_threshold": (FloatSlider, 0.0, 1.0, 0.01, "instance bg"),
    "semantic_bg_threshold": (FloatSlider, 0.0, 1.0, 0.01, "semantic bg"),
    "min_fragment_fraction": (FloatSpinBox, 0.0, 0.05, 0.0005, "min fragment"),
}


class ParameterSliders(Section):
    """The sliders of :data:`LIVE_PARAMS` (named by their ``Params`` field) and a reset button.

    ``on_change()`` is called after every change a person makes (not after :meth:`show`).
    """

    def __init__(self, on_change: Callable[[], None]) -> None:
        super().__init__("Live parameters")
        self.param_widgets: dict[str, Any] = {}
        defaults = Params()
        for name, (cls, lo, hi, step, label) in LIVE_PARAMS.items():
            w = cls(name=name, label=label, min=lo, max=hi, step=step, value=getattr(defaults, name))
            w.tooltip = f"Params.{name}" + (" (fraction of the image area)" if name == "min_fragment_fraction" else "")
            w.changed.connect(lambda *_: on_change())
            self.param_widgets[name] = w
        self.reset_params_button = PushButton(text="Reset to the checkpoint's values", name="reset_params_button")
        self.extend([Container(widgets=list(self.param_widgets.values()), name="parameters"), self.reset_params_button])

    def values(self) -> dict[str, Any]:
        """The sliders' values by ``Params`` field name."""
        live = {name: w.value for name, w in self.param_widgets.items()}
        live["walk_steps"] = int(live["walk_steps"])
        return live

    def show(self, params: Params) -> None:
        """Show ``params`` on the sliders (no change is reported)."""
        for name, w in self.param_widgets.items():
            with w.changed.blocked():
                w.value = getattr(params, name)

    def set_to(self, params: Params) -> None:
        """Move the sliders to ``params`` (each change is reported, as if a person moved them)."""
        for name, w in self.param_widgets.items():
            w.value = getattr(params, name)
