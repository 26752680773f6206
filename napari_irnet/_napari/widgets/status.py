"""The IRNet panel's status line and its Run / Cancel buttons."""

from __future__ import annotations

from magicgui.widgets import Container, Label, PushButton

from . import Section, row


class StatusBox(Section):
    """What the panel is doing (a line that wraps, never widening the dock), Run and Cancel."""

    def __init__(self) -> None:
        super().__init__()
        self.status = Label(label="status", name="status", value="choose an image and a checkpoint, then Run")
        self.status.native.setWordWrap(True)
        self.run_button = PushButton(text="Run", name="run_button", tooltip="Run both networks once, then every stage")
        self.cancel_button = PushButton(text="Cancel", name="cancel_button", enabled=False)
        self.extend([Container(widgets=[self.status], name="status_box"), row(self.run_button, self.cancel_button)])

    def show_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
