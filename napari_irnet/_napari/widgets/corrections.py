"""The IRNet panel's corrections: the class for edits, what is picked, the image's state, the edit buttons."""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import ComboBox, Container, Label, PushButton

from ..shortcuts import SHORTCUTS, key_text
from . import Section, row

#: button name -> (text, shortcut action or None, tooltip)
BUTTONS = {
    "merge_button": ("Merge", "merge", "Merge the picked instances into the first one picked"),
    "split_button": ("Split", "split", "Split along the path drawn in 'split line', or between two picks in one instance"),
    "delete_button": ("Delete", "delete", "Delete the picked instances (or the selected label); their pixels stay background"),
    "set_class_button": ("Set class", "set_class", "Give the picked instances the class chosen above"),
    "next_id_button": ("New id", "next_id", "Select the next free id in 'instances' and start painting"),
    "draw_line_button": ("Split line", None, "Draw a path across one instance in the 'split line' layer, then Split"),
    "undo_button": ("Undo", "undo", "Undo the last edit, brush stroke or parameter change"),
    "redo_button": ("Redo", "redo", "Redo"),
    "clear_picks_button": ("Clear picks", "clear_picks", "Forget the picked instances"),
    "reset_centroids_button": ("Centroids from field", None, "Forget edited centroids: clusters come from the displacement field again"),
    "accept_button": ("Accept", "accept", "Mark every instance and the image as done; saved with the image"),
    "discard_button": ("Discard…", None, "Replace every instance with the model's proposal (asks first; undoable)"),
}


def _button(name: str, text: str, action: str | None, tip: str) -> PushButton:
    label = f"{text}  {key_text(action)}" if action else text
    return PushButton(text=label, name=name, tooltip=tip + (f" (shortcut {SHORTCUTS[action]})" if action else ""))


class CorrectionsBox(Section):
    """The class menu, the picked instances, the image's state and the buttons of :data:`BUTTONS` (two a row).

    ``class_choices()`` gives the classes offered for edits.
    """

    def __init__(self, class_choices: Callable[[], list[str]]) -> None:
        super().__init__("Corrections")
        self.edit_class = ComboBox(label="class", name="edit_class", choices=lambda *_: class_choices())
        self.edit_class.tooltip = "Class for Set class, for painted instances and for Shift+click (click to add)"
        self.new_class_note = Label(label="new", name="new_class_note", value="–")
        self.new_class_note.tooltip = "The class a painted or added instance gets"
        self.picked = Label(label="picked", name="picked", value="–")
        self.picked.tooltip = "Click instances to pick them (the instances layer in pan/zoom mode); Shift+click on background adds one"
        self.image_state = Label(label="image", name="image_state", value="–")
        self.image_state.native.setWordWrap(True)
        self.buttons = {name: _button(name, *spec) for name, spec in BUTTONS.items()}
        pairs = list(self.buttons.values())
        self.extend([
            Container(widgets=[self.edit_class, self.new_class_note, self.picked, self.image_state], name="edit_box"),
            *(row(*pairs[i : i + 2]) for i in range(0, len(pairs), 2)),
        ])  # fmt: skip

    def show(self, has_image: bool, can_undo: bool, can_redo: bool, state: str) -> None:
        """Enable the buttons for an image (or none), undo and redo as the history allows; the image's state."""
        for button in self.buttons.values():
            button.enabled = has_image
        self.buttons["undo_button"].enabled = can_undo
        self.buttons["redo_button"].enabled = can_redo
        self.image_state.value = state

    def show_picks(self, ids: list[int]) -> None:
        self.picked.value = ", ".join(str(i) for i in ids) if ids else "–"

    def show_new_class(self, class_name: str) -> None:
        self.new_class_note.value = f"painted and added instances: {class_name}" if class_name else "–"
