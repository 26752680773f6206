"""The IRNet panel's corrections: picking, the edit buttons and keys, painting, undo, saving.

A mixin of :class:`napari_irnet._napari.irnet_widget.IRNetWidget`, kept apart so that
each file stays readable. The edit rules are not here: every action calls
the image's :class:`~napari_irnet.core.annotation.AnnotationSession`, whose
listener (:meth:`EditActions._on_annotation_change`) brings the layers up to
date. After every edit the ``instances`` layer is the active one, so the
next click picks and the next key works.

Keys (bound on the viewer while the panel is docked, and on the
``instances`` layer): Shift-M merge, Shift-S split, Shift-D delete, Shift-C
set class, Shift-N next free id (then paint), Shift-A accept, Shift-K clear
picks, Ctrl-Z undo, Ctrl-Shift-Z redo. With the ``instances`` layer in
pan/zoom mode a click picks the instance under it, and Shift+click on
background adds the object there (click to add).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

from ..core.annotation import AnnotationChange
from ..core.corrections import image_fingerprint
from ..core.edits import EditError, LabelDiff
from ..core.io import InputError, OutputError
from . import layers as _layers
from .context import ImageSession, find_layer

SHORTCUTS = {
    "merge": "Shift-M",
    "split": "Shift-S",
    "delete": "Shift-D",
    "set_class": "Shift-C",
    "next_id": "Shift-N",
    "accept": "Shift-A",
    "clear_picks": "Shift-K",
    "undo": "Control-Z",
    "redo": "Control-Shift-Z",
}
#: instances further apart than this (pixels) are merged only with a warning
MERGE_GAP_WARNING = 2.0


class EditActions:
    """Corrections of the current image (mixed into the IRNet panel)."""

    _current: ImageSession | None
    _viewer: Any

    # ------------------------------------------------------------------ keys
    def _shortcut_actions(self) -> dict[str, Any]:
        return {
            "merge": self.merge_picked,
            "split": self.split,
            "delete": self.delete_picked,
            "set_class": self.set_class_of_picked,
            "next_id": self.next_free_id,
            "accept": self.accept,
            "clear_picks": self.clear_picks,
            "undo": self.undo,
            "redo": self.redo,
        }

    def _bind_keys(self, provider) -> None:
        """Bind the shortcuts on ``provider`` (the viewer, or the instances layer)."""
        for action, func in self._shortcut_actions().items():
            provider.bind_key(SHORTCUTS[action], lambda _obj, f=func: f(), overwrite=True)

    def _unbind_keys(self, provider) -> None:
        for key in SHORTCUTS.values():
            try:
                provider.bind_key(key, None, overwrite=True)
            except Exception:  # noqa: BLE001 - a viewer being torn down
                pass

    # ------------------------------------------------------------------ the annotation's changes -> layers
    def _on_annotation_change(self, session: ImageSession, change: AnnotationChange) -> None:
        """The annotation changed (edit, re-run, undo, redo): show it."""
        if self._closed:
            return
        if change.labels is not None:
            self._write_labels(session, change.labels)
        self._refresh_features(session)
        self._refresh_controls()

    def _write_labels(self, session: ImageSession, diff: LabelDiff) -> None:
        layer = find_layer(self._viewer.layers, session.image_id, "instances")
        if layer is None or layer.data.shape != session.labels.shape:
            self._put_instances(session)
            return
        values = diff.new.astype(layer.data.dtype)
        self._applying = True
        try:
            with layer.block_history():
                layer.data_setitem(diff.indices(), values)
        finally:
            self._applying = False

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
            self._set_status(f"not done: {exc}")
            return None

    def _after_edit(self, session: ImageSession, what: str | None = None) -> None:
        """Save, forget the picks, make ``instances`` active, say what happened."""
        session.picks.clear()
        self._show_picks(session)
        self._save(session)
        self._activate_instances(session)
        self._refresh_controls()
        if what:
            self._set_status(f"{what}; {self._describe(session)}")

    def _describe(self, session: ImageSession) -> str:
        counts = session.annotation.counts()
        n = sum(counts.values())
        return f"{n} instances ({counts['edited']} edited, {counts['accepted']} accepted), {session.state}"

    def _picked_ids(self) -> list[int]:
        session = self._current
        ids = list(dict.fromkeys(i for i, _ in session.picks)) if session else []
        return [i for i in ids if np.any(session.labels == i)]

    def _picked_or_selected(self) -> list[int]:
        ids = self._picked_ids()
        if ids:
            return ids
        layer = self._instances_layer(self._current)
        sel = int(layer.selected_label) if layer is not None else 0
        return [sel] if sel and np.any(self._current.labels == sel) else []

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
        self._after_edit(session, f"merged {ids} into {ids[0]}")
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
        self._after_edit(self._current, f"deleted {ids} (they stay background)")

    def split(self, line: np.ndarray | None = None, seeds: np.ndarray | None = None) -> None:
        """Split an instance along ``line`` / the drawn split line, or between two seeds.

        Without arguments: the last path in the ``split line`` layer if there
        is one, else the picks when two or more lie in one instance.
        """
        self._guard(self._split, line, seeds)

    def _split(self, line, seeds) -> None:
        session = self._current
        line_layer = find_layer(self._viewer.layers, session.image_id, "split line")
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
        self._after_edit(session, f"split into {new_ids} and the rest")

    def set_class_of_picked(self, class_name: str | None = None) -> None:
        """Give the picked instances (or the selected label) ``class_name`` (default: the class menu)."""
        self._guard(self._set_class, class_name)

    def _set_class(self, class_name) -> None:
        class_name = class_name or self.edit_class.value
        ids = self._picked_or_selected()
        if not ids:
            raise EditError("pick the instances whose class to change")
        self._current.annotation.set_class(ids, class_name)
        self._after_edit(self._current, f"{ids} are {class_name}")

    def add_at(self, point, class_name: str | None = None) -> int:
        """Click to add: the object under ``point`` (y, x in pixels) from the cached network outputs.

        Its class is ``class_name`` (default: the class menu's); one undoable
        step. Returns the new id (0 when no object was found: a warning says why).
        """
        return self._guard(self._add_at, point, class_name) or 0

    def _add_at(self, point, class_name) -> int:
        session = self._current
        class_name = class_name or self.edit_class.value or session.annotation.default_class
        label = session.annotation.add_at(point, session.result.outputs, session.params, class_name, session.model_classes)
        self._after_edit(session, f"added {label} ({class_name})")
        return label

    def next_free_id(self, *_) -> int:
        """Select the next free id in the instances layer and switch it to painting."""
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return 0
        new_id = session.annotation.new_id()
        layer = self._instances_layer(session)
        layer.selected_label = new_id
        layer.mode = "paint"
        self._viewer.layers.selection.active = layer
        self._set_status(f"painting instance {new_id}: it will be {self._new_class()}")
        return new_id

    def draw_split_line(self, *_) -> None:
        """Add (or select) the ``split line`` Shapes layer in path mode."""
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return
        layer = find_layer(self._viewer.layers, session.image_id, "split line")
        if layer is None:
            layer = self._viewer.add_shapes(
                name="split line", edge_color="red", edge_width=2, face_color="transparent",
                metadata=_layers.layer_meta("split line", session.image_id),
            )
        self._viewer.layers.selection.active = layer
        layer.mode = "add_path"

    def accept(self, *_) -> None:
        """Mark every instance and the image as accepted (saved with the image)."""
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return
        session.annotation.accept()
        self._after_edit(session, f"{session.image_name} accepted; saved in {session.store}")

    def set_instances(self, labels: np.ndarray, classes: dict[int, str] | None = None) -> None:
        """Replace the instances with a given map (e.g. from another tool); undoable.

        ``classes`` maps ids to class names (default: the class menu's). The
        instances count as edited, so parameter changes keep them.
        """
        session = self._current
        if session is None:
            show_warning("napari-irnet: run the model on an image first")
            return
        session.annotation.default_class = self._new_class()
        try:
            session.annotation.replace(np.asarray(labels), classes)
        except EditError as exc:
            show_error(f"napari-irnet: {exc}")
            return
        self._after_edit(session, "instances replaced")

    def discard_corrections(self, *_) -> None:
        """After asking: replace every instance with the model's current proposal (undoable)."""
        session = self._current
        if session is None:
            return
        if not session.annotation.has_corrections:
            show_info("napari-irnet: nothing to discard")
            return
        if not self._confirm("Discard every hand-edited and accepted instance of this image and use the model's proposal?"):
            return
        self._guard(session.annotation.discard)
        self._after_edit(session, "corrections discarded")

    def _confirm(self, question: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self.native, "napari-irnet", question)
        return answer == QMessageBox.StandardButton.Yes

    # ------------------------------------------------------------------ picking and click to add
    def _on_instances_click(self, layer, event):
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
            self._set_status("nothing to pick there (Shift+click adds an instance on background)")
            return 0
        session.picks.append((label, point))
        self._show_picks(session)
        info = session.annotation.info(label)
        self._set_status(f"picked {label}: {info.class_name}, {info.state}, score {info.score:.2f}")
        return label

    def clear_picks(self, *_) -> None:
        if self._current is not None:
            self._current.picks.clear()
            self._show_picks(self._current)

    def _show_picks(self, session: ImageSession) -> None:
        ids = list(dict.fromkeys(i for i, _ in session.picks))
        self.picked.value = ", ".join(str(i) for i in ids) if ids else "–"
        pts = np.array([p for _, p in session.picks], dtype=np.float64).reshape(-1, 2)
        layer = find_layer(self._viewer.layers, session.image_id, "picks")
        if layer is None and len(pts) == 0:
            return
        if layer is None:
            layer = self._viewer.add_points(
                pts, name="picks", symbol="cross", size=9, face_color="red", border_color="white",
                metadata=_layers.layer_meta("picks", session.image_id),
            )
            self._activate_instances(session)
        else:
            layer.data = pts

    # ------------------------------------------------------------------ painting
    def _on_paint(self, event=None) -> None:
        """A brush, fill or eraser stroke ended (napari may emit this before writing the pixels)."""
        if self._applying or self._current is None or self._paint_check_queued:
            return
        self._paint_check_queued = True
        QTimer.singleShot(0, self._record_paint)

    def _record_paint(self) -> None:
        """Record what the brush changed; touched instances become edited, erased pixels annotator background."""
        self._paint_check_queued = False
        session = self._current
        if session is None or self._closed:
            return
        layer = find_layer(self._viewer.layers, session.image_id, "instances")
        if layer is None or layer.data.shape != session.labels.shape:
            return
        session.annotation.default_class = self._new_class()
        if session.annotation.record_paint(LabelDiff.between(session.labels, np.asarray(layer.data))) is not None:
            self._save(session)
            self._refresh_controls()
            self._set_status(f"painted; {self._describe(session)}")

    # ------------------------------------------------------------------ undo / redo
    def undo(self, *_) -> None:
        """Undo the last edit, paint stroke or parameter change of this image."""
        self._step(undo=True)

    def redo(self, *_) -> None:
        self._step(undo=False)

    def _step(self, undo: bool) -> None:
        session = self._current
        if session is None:
            return
        self._drop_pending_updates()  # a re-run waiting would apply on top of the state being restored
        params_before = session.params
        record = session.annotation.undo() if undo else session.annotation.redo()
        if record is None:
            show_info(f"napari-irnet: nothing to {'undo' if undo else 'redo'}")
            return
        snap = record.before if undo else record.after
        self._restore_snapshot(session, snap)
        if session.params != params_before or "points" in snap:
            self._resync_cache(session, snap)
        self._after_edit(session, f"{'undid' if undo else 'redid'}: {record.name}")

    # ------------------------------------------------------------------ storage
    def _save(self, session: ImageSession) -> None:
        """Store the corrections in the image's store; nothing is stored for a pure proposal."""
        ann = session.annotation
        if not session.input_fingerprint:
            session.input_fingerprint = image_fingerprint(session.image)
        try:
            if not ann.has_corrections:
                session.store.clear()
                return
            corr = ann.to_corrections(
                image_name=session.image_name,
                fingerprint=session.input_fingerprint or image_fingerprint(session.image),
                data_fingerprint=session.fingerprint,
                checkpoint=session.result.checkpoint,
                params=session.params.to_dict(),
            )
            session.store.save(corr)
        except (OutputError, InputError, OSError, ValueError) as exc:
            show_error(f"napari-irnet: corrections not saved: {exc}")
