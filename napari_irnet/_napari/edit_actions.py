"""The IRNet panel's corrections of the current image: picking, the edit buttons and keys, painting.

The edit rules are not here: every action calls the image's
:class:`~napari_irnet.annotation.session.AnnotationSession`, whose listener
(in the panel) brings the layers up to date; the corrections are stored by
:meth:`~napari_irnet._napari.context.ImageSession.save`. After every edit
the ``instances`` layer is the active one, so the next click picks and the
next key works. With the ``instances`` layer in pan/zoom mode a click picks
the instance under it, and Shift+click on background adds the object there
(click to add). Undo, redo and centroid edits are
:mod:`napari_irnet._napari.edit_history`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

from ..annotation.edits import EditError
from ..annotation.history import LabelDiff
from .context import ImageSession, ViewerContext
from .layer_sync import LayerSync
from .widgets.corrections import CorrectionsBox

#: instances further apart than this (pixels) are merged only with a warning
MERGE_GAP_WARNING = 2.0


class EditActions:
    """Corrections of the context's current image, as the buttons, keys and clicks ask for them.

    ``status(text)`` shows what happened; ``refresh()`` updates the panel's
    controls; ``parent`` is the Qt widget a question is asked over. :attr:`confirm` asks a yes/no question before Discard (a
    script may replace it).
    """

    def __init__(
        self,
        viewer,
        context: ViewerContext,
        layers: LayerSync,
        box: CorrectionsBox,
        status: Callable[[str], None],
        refresh: Callable[[], None],
        parent=None,
    ) -> None:
        self._viewer = viewer
        self._parent = parent  # the Qt widget questions are asked over
        self._context = context
        self._layers = layers
        self._box = box
        self._status = status
        self._refresh = refresh
        self.confirm: Callable[[str], bool] = self._ask
        self._paint_check_queued = False
        self.closed = False

    @property
    def _current(self) -> ImageSession | None:
        return self._context.current

    def actions(self) -> dict[str, Callable[[], Any]]:
        """The actions the keys and buttons start, by shortcut name."""
        return {
            "merge": self.merge_picked,
            "split": self.split,
            "delete": self.delete_picked,
            "set_class": self.set_class_of_picked,
            "next_id": self.next_free_id,
            "accept": self.accept,
            "clear_picks": self.clear_picks,
        }

    # ------------------------------------------------------------------ running an edit
    def _guard(self, func, *args, **kwargs):
        """Run an edit; a refused edit becomes a warning, never an exception in the viewer."""
        if self._current is None:
            show_warning("napari-irnet: run the model on an image first")
            return None
        try:
            return func(*args, **kwargs)
        except EditError as exc:
            show_warning(f"napari-irnet: {exc}")
            self._status(f"not done: {exc}")
            return None

    def after_edit(self, session: ImageSession, what: str | None = None, save: bool = True) -> None:
        """Save (unless done already), forget the picks, make ``instances`` active, say what happened."""
        session.picks.clear()
        self.show_picks(session)
        error = session.save() if save else None
        if error:
            show_error(f"napari-irnet: {error}")
        self._layers.activate_instances(session)
        self._refresh()
        if what:
            self._status(f"{what}; {session.describe()}")

    def _picked_ids(self) -> list[int]:
        session = self._current
        ids = list(dict.fromkeys(i for i, _ in session.picks)) if session else []
        return [i for i in ids if np.any(session.labels == i)]

    def _picked_or_selected(self) -> list[int]:
        ids = self._picked_ids()
        if ids:
            return ids
        layer = self._layers.instances_layer(self._current)
        sel = int(layer.selected_label) if layer is not None else 0
        return [sel] if sel and np.any(self._current.labels == sel) else []

    # ------------------------------------------------------------------ the class of new instances
    def new_class(self) -> str:
        """The class a painted or added instance gets: the menu's, else the image's first."""
        if self._box.edit_class.value:
            return str(self._box.edit_class.value)
        return self._current.annotation.default_class if self._current is not None else ""

    def show_new_class(self) -> None:
        if self.closed:
            return
        cls = self.new_class()
        if self._current is not None and cls:
            self._current.annotation.default_class = cls
        self._box.show_new_class(cls)

    def default_edit_class(self, session: ImageSession) -> None:
        """The class menu starts on the image's first class (never one the image does not have)."""
        self._box.edit_class.reset_choices()
        if self._box.edit_class.value not in session.classes and session.classes:
            self._box.edit_class.value = session.classes[0]
        self.show_new_class()

    # ------------------------------------------------------------------ the edits
    def merge_picked(self, *_) -> None:
        """Merge the picked instances into the first one picked (warns when they do not touch)."""
        self._guard(self._merge)

    def _merge(self) -> None:
        session, ids = self._current, self._picked_ids()
        if len(ids) < 2:
            raise EditError("pick two instances to merge (click them with the instances layer in pan/zoom mode)")
        gap = session.annotation.gap(ids)
        session.annotation.merge(ids)
        self.after_edit(session, f"merged {ids} into {ids[0]}")
        if gap > MERGE_GAP_WARNING:
            show_warning(f"napari-irnet: the merged instances {ids} do not touch ({gap:.0f} px apart); undo (Ctrl-Z) if that was not meant")

    def delete_picked(self, *_) -> None:
        """Delete the picked instances (or the selected label); their pixels stay background."""
        self._guard(self._delete)

    def _delete(self) -> None:
        ids = self._picked_or_selected()
        if not ids:
            raise EditError("pick the instances to delete (or select their label)")
        self._current.annotation.delete(ids)
        self.after_edit(self._current, f"deleted {ids} (they stay background)")

    def split(self, line: np.ndarray | None = None, seeds: np.ndarray | None = None) -> None:
        """Split an instance along ``line`` / the drawn split line, or between two seeds.

        Without arguments: the last path in the ``split line`` layer if there
        is one, else the picks when two or more lie in one instance.
        """
        self._guard(self._split, line, seeds)

    def _split(self, line, seeds) -> None:
        session = self._current
        line_layer = self._layers.split_line(session)
        if line is None and seeds is None:
            if line_layer is not None and len(line_layer.data):
                line = np.asarray(line_layer.data[-1])[:, -2:]
            elif len(session.picks) >= 2:
                seeds = np.array([p for _, p in session.picks])
            else:
                raise EditError("draw a split line across an instance (Draw split line), or pick two points inside it")
        _, new_ids = session.annotation.split(line=line, seeds=seeds, image=session.image if seeds is not None else None)
        if line is not None and line_layer is not None:
            line_layer.data = []
            line_layer.mode = "pan_zoom"
        self.after_edit(session, f"split into {new_ids} and the rest")

    def set_class_of_picked(self, class_name: str | None = None) -> None:
        """Give the picked instances (or the selected label) ``class_name`` (default: the class menu)."""
        self._guard(self._set_class, class_name)

    def _set_class(self, class_name) -> None:
        class_name = class_name or self._box.edit_class.value
        ids = self._picked_or_selected()
        if not ids:
            raise EditError("pick the instances whose class to change")
        self._current.annotation.set_class(ids, class_name)
        self.after_edit(self._current, f"{ids} are {class_name}")

    def add_at(self, point, class_name: str | None = None) -> int:
        """Click to add: the object under ``point`` (y, x in pixels) from the cached network outputs.

        Its class is ``class_name`` (default: the class menu's); one undoable
        step. Returns the new id (0 when no object was found: a warning says why).
        """
        return self._guard(self._add_at, point, class_name) or 0

    def _add_at(self, point, class_name) -> int:
        session = self._current
        class_name = class_name or self._box.edit_class.value or session.annotation.default_class
        label = session.annotation.add_at(point, session.result.outputs, session.params, class_name, session.model_classes)
        self.after_edit(session, f"added {label} ({class_name})")
        return label

    def next_free_id(self, *_) -> int:
        """Select the next free id in the instances layer and switch it to painting."""
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return 0
        new_id = session.annotation.new_id()
        layer = self._layers.instances_layer(session)
        layer.selected_label = new_id
        layer.mode = "paint"
        self._viewer.layers.selection.active = layer
        self._status(f"painting instance {new_id}: it will be {self.new_class()}")
        return new_id

    def draw_split_line(self, *_) -> None:
        """Add (or select) the ``split line`` Shapes layer in path mode."""
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return
        layer = self._layers.split_line(session, create=True)
        self._viewer.layers.selection.active = layer
        layer.mode = "add_path"

    def accept(self, *_) -> None:
        """Mark every instance and the image as accepted (saved with the image)."""
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return
        error = session.accept()
        if error:
            show_error(f"napari-irnet: {error}")
        self.after_edit(session, f"{session.image_name} accepted; saved in {session.store}", save=False)

    def set_instances(self, labels: np.ndarray, classes: dict[int, str] | None = None) -> None:
        """Replace the instances with a given map (e.g. from another tool); undoable.

        ``classes`` maps ids to class names (default: the class menu's). The
        instances count as edited, so parameter changes keep them.
        """
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return
        session.annotation.default_class = self.new_class()
        try:
            session.annotation.replace(np.asarray(labels), classes)
        except EditError as exc:
            show_error(f"napari-irnet: {exc}")
            return
        self.after_edit(session, "instances replaced")

    def discard_corrections(self, *_) -> None:
        """After asking: replace every instance with the model's current proposal (undoable)."""
        session = self._current
        if session is None:
            return
        if not session.annotation.has_corrections:
            show_info("napari-irnet: nothing to discard")
            return
        if not self.confirm("Discard every hand-edited and accepted instance of this image and use the model's proposal?"):
            return
        self._guard(session.annotation.discard)
        self.after_edit(session, "corrections discarded")

    def _ask(self, question: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self._parent, "napari-irnet", question)
        return answer == QMessageBox.StandardButton.Yes

    # ------------------------------------------------------------------ picking and click to add
    def on_instances_click(self, layer, event):
        """The instances layer's mouse callback: a click picks, a Shift+click adds (a drag does neither)."""
        if layer.mode != "pan_zoom":
            return
        start = np.asarray(event.position)[-2:]
        adding = "Shift" in {str(m) for m in getattr(event, "modifiers", ())}
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if dragged:
            return
        point = layer.world_to_data(start) if hasattr(layer, "world_to_data") else start
        if adding:
            self.add_at(point)
        else:
            self.pick_at(point)

    def pick_at(self, point) -> int:
        """Pick the instance under ``point`` (y, x in pixels); returns its id (0: nothing there)."""
        session = self._current
        if session is None:
            return 0
        point = tuple(float(v) for v in np.asarray(point)[-2:])
        label = session.annotation.instance_at(point)
        if label == 0:
            self._status("nothing to pick there (Shift+click adds an instance on background)")
            return 0
        session.picks.append((label, point))
        self.show_picks(session)
        info = session.annotation.info(label)
        self._status(f"picked {label}: {info.class_name}, {info.state}, score {info.score:.2f}")
        return label

    def clear_picks(self, *_) -> None:
        if self._current is not None:
            self._current.picks.clear()
            self.show_picks(self._current)

    def show_picks(self, session: ImageSession) -> None:
        self._box.show_picks(list(dict.fromkeys(i for i, _ in session.picks)))
        if self._layers.show_picks(session):
            self._layers.activate_instances(session)

    # ------------------------------------------------------------------ painting
    def on_paint(self, event=None) -> None:
        """A brush, fill or eraser stroke ended (napari may emit this before writing the pixels)."""
        if self._layers.applying or self._current is None or self._paint_check_queued:
            return
        self._paint_check_queued = True
        QTimer.singleShot(0, self._record_paint)

    def _record_paint(self) -> None:
        """Record what the brush changed; touched instances become edited, erased pixels annotator background."""
        self._paint_check_queued = False
        session = self._current
        if session is None or self.closed:
            return
        layer = self._layers.find(session, "instances")
        if layer is None or layer.data.shape != session.labels.shape:
            return
        session.annotation.default_class = self.new_class()
        if session.annotation.record_paint(LabelDiff.between(session.labels, np.asarray(layer.data))) is not None:
            error = session.save()
            if error:
                show_error(f"napari-irnet: {error}")
            self._refresh()
            self._status(f"painted; {session.describe()}")
