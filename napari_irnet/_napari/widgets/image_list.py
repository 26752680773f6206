"""The Project panel's list: every image of the project with its state, coloured, and the counts."""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import Label
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from ..project_jobs import STATE_COLOURS
from . import Section, holder


class ImageList(Section):
    """The project's images and their states (``new``, ``proposed``, ``corrected``, ``accepted``).

    ``chosen(row)`` is called when a person picks a row (not when :meth:`select` moves it).
    """

    def __init__(self, chosen: Callable[[int], None]) -> None:
        super().__init__()
        self.names: list[str] = []
        self.states: list[str] = []
        self._title = ""
        self._quiet = False  # our own row changes: not a person's choice
        self.closed = False
        self.project_label = Label(name="project_label", value="no project open")
        self.project_label.native.setWordWrap(True)
        self.list = QListWidget()
        self.list.setMinimumHeight(160)
        self.extend([self.project_label, holder(self.list, "images", "images")])
        self.list.currentRowChanged.connect(lambda row: None if self._quiet or row < 0 else chosen(row))

    def _row_text(self, i: int) -> str:
        return f"{self.names[i]}  —  {self.states[i]}"

    def _paint(self, item: QListWidgetItem, state: str) -> None:
        item.setForeground(QColor(STATE_COLOURS.get(state, "#9a9a9a")))
        item.setToolTip(f"state: {state}")

    def fill(self, title: str, names: list[str], states: list[str], current: int | None) -> None:
        """Show a project's images (``title``: the project's name) with ``current`` chosen."""
        self._title, self.names, self.states = title, list(names), list(states)
        self._quiet = True
        try:
            self.list.clear()
            for i, state in enumerate(self.states):
                item = QListWidgetItem(self._row_text(i))
                self._paint(item, state)
                self.list.addItem(item)
            if current is not None:
                self.list.setCurrentRow(current)
        finally:
            self._quiet = False
        self.show_counts()

    def set_state(self, name: str, state: str) -> None:
        """Record an image's new state (and show it, while the panel is open)."""
        i = self.names.index(name)
        self.states[i] = state
        if self.closed:
            return
        item = self.list.item(i)
        if item is not None:
            item.setText(self._row_text(i))
            self._paint(item, state)
        self.show_counts()

    def state_of(self, name: str) -> str:
        return self.states[self.names.index(name)]

    def select(self, row: int) -> None:
        """Move the list to ``row`` (not a person's choice)."""
        self._quiet = True
        try:
            self.list.setCurrentRow(row)
        finally:
            self._quiet = False

    def show_counts(self) -> None:
        counts = {s: self.states.count(s) for s in STATE_COLOURS}
        text = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        self.project_label.value = f"{self._title}: {len(self.states)} images ({text})"
