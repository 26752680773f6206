"""The IRNet panel's "Stages shown": one check box per stage layer, and the legend of the colours."""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import CheckBox, Container, Label

from ..layers import STAGES, VISIBLE_STAGES, legend_html
from . import Section


class StageToggles(Section):
    """Which stage layers are shown (``on_toggle(stage, shown)`` after a change), and the legend."""

    def __init__(self, on_toggle: Callable[[str, bool], None]) -> None:
        super().__init__("Stages shown")
        self.show_stage: dict[str, CheckBox] = {}
        for stage in STAGES:
            cb = CheckBox(text=stage, name=f"show_{stage}", value=stage in VISIBLE_STAGES)
            cb.changed.connect(lambda value, s=stage: on_toggle(s, value))
            self.show_stage[stage] = cb
        boxes = list(self.show_stage.values())
        rows = [Container(widgets=boxes[i : i + 3], layout="horizontal", labels=False) for i in range(0, len(boxes), 3)]
        self.legend = Label(name="legend", value="")
        self.legend.native.setWordWrap(True)
        self.legend.tooltip = "Instances, seeds and semantic in their class's colour (instances in shades of it); outlines: edited, accepted"
        self.extend([*rows, self.legend])

    def visible(self, stage: str) -> bool | None:
        """Whether a new layer of ``stage`` starts shown (None: not a stage of this list)."""
        box = self.show_stage.get(stage)
        return box.value if box is not None else None

    def show_legend(self, classes: list[str], image_classes: list[str]) -> None:
        self.legend.value = legend_html(classes, image_classes)
