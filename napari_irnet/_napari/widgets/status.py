"""The IRNet panel's status line and its Run / Cancel buttons."""

from __future__ import annotations

from magicgui.widgets import Container, Label, ProgressBar, PushButton

from . import Section, row


class StatusBox(Section):
    """What the panel is doing (a line that wraps, never widening the dock), a Run's progress, Run and Cancel.

    The progress bar is the panel's own rather than napari's ``progress``:
    napari shows an animated activity indicator while one of its bars is
    open, and in a window drawn by software OpenGL (Mesa llvmpipe: Xvfb,
    remote desktops, virtual machines) every frame of it redraws the whole
    window. During a Run of a 3000² image on a 2-core CPU that took 17 of
    its 136 processor seconds: the Run took 71 s, and 52 s with the bar
    replaced by a stand-in that draws nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.status = Label(label="status", name="status", value="choose an image and a checkpoint, then Run")
        self.status.native.setWordWrap(True)
        self.run_button = PushButton(text="Run", name="run_button", tooltip="Run both networks once, then every stage")
        self.cancel_button = PushButton(text="Cancel", name="cancel_button", enabled=False)
        self.progress = ProgressBar(name="run_progress", min=0, max=1, value=0, visible=False)
        self.extend([Container(widgets=[self.status], name="status_box"), self.progress, row(self.run_button, self.cancel_button)])

    def show_progress(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` on the bar; ``total`` 0 hides it."""
        if total <= 0:
            self.progress.visible = False
            return
        if self.progress.max != total:
            self.progress.max = total
        self.progress.value = min(max(0, done), total)
        self.progress.visible = True

    def show_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
