"""The Fine-tune panel's versions: the checkpoint's stored versions, Use this version, Compare on image."""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import CheckBox, ComboBox, PushButton

from . import Section, row


class VersionsBox(Section):
    """Whether the IRNet panel takes new versions, the versions of the checkpoint (``choices()``), Use and Compare."""

    def __init__(self, choices: Callable[[], list[tuple[str, str]]]) -> None:
        super().__init__("Versions", labels=True)
        self._choices = choices
        self.use_new = CheckBox(text="IRNet panel uses new versions", name="use_new", value=True)
        self.versions = ComboBox(label="versions", name="versions", choices=lambda *_: choices())
        self.use_version_button = PushButton(text="Use this version", name="use_version_button")
        self.use_version_button.tooltip = "Roll back or forward: fine-tune from this version, and use it in the IRNet panel"
        self.compare_button = PushButton(text="Compare on image", name="compare_button")
        self.compare_button.tooltip = "Run the IRNet panel's current image with the chosen version; adds 'instances (vN)' layers"
        self.extend([self.use_new, self.versions, row(self.use_version_button, self.compare_button)])

    def show_versions(self, current: str | None) -> None:
        """The versions again, with ``current`` chosen when it is one of them."""
        self.versions.reset_choices()
        if current in [path for _, path in self._choices()]:
            self.versions.value = current

    def enable(self, running: bool, comparing: bool) -> None:
        has = bool(self.versions.value)
        self.compare_button.enabled = not comparing and has
        self.use_version_button.enabled = not running and has
