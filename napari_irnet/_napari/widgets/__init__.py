"""The dock widgets' parts: small magicgui containers, one section of a panel each.

They hold controls and say how the controls read; the dock widgets
(:mod:`~napari_irnet._napari.irnet_widget`,
:mod:`~napari_irnet._napari.project_widget`,
:mod:`~napari_irnet._napari.finetune_widget`) assemble them and connect
them to the viewer context, the jobs and the layers.
"""

from __future__ import annotations

from magicgui.widgets import Container, EmptyWidget, Label
from qtpy.QtWidgets import QVBoxLayout


class Section(Container):
    """A part of a panel: an optional bold title, then its widgets (added by the subclass), no margins of its own.

    Its widgets are shown without labels unless ``labels`` (a form).
    """

    def __init__(self, title: str | None = None, labels: bool = False, **kwargs) -> None:
        super().__init__(labels=labels, **kwargs)
        self.margins = (0, 0, 0, 0)
        if title:
            self.append(Label(value=f"<b>{title}</b>"))


def row(*widgets) -> Container:
    """Widgets side by side."""
    return Container(widgets=list(widgets), layout="horizontal", labels=False)


def holder(qt_widget, name: str, label: str) -> EmptyWidget:
    """A magicgui widget that shows a plain Qt widget (a list, a plot) with a label."""
    box_widget = EmptyWidget(name=name, label=label)
    box = box_widget.native.layout()
    if box is None:
        box = QVBoxLayout()
        box_widget.native.setLayout(box)
    box.setContentsMargins(0, 0, 0, 0)
    box.addWidget(qt_widget)
    return box_widget
