"""The Fine-tune panel's loss plot: the training loss per step as a polyline (no plotting library)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget


class LossPlot(QWidget):
    """The training loss per step, drawn as a polyline (no plotting library)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._steps: list[int] = []
        self._losses: list[float] = []
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("fine-tuning loss per step")

    @property
    def points(self) -> list[tuple[int, float]]:
        """(step, loss) pairs drawn so far."""
        return list(zip(self._steps, self._losses))

    def add(self, step: int, loss: float) -> None:
        self._steps.append(int(step))
        self._losses.append(float(loss))
        self.update()

    def clear(self) -> None:
        self._steps.clear()
        self._losses.clear()
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        try:
            self._paint(painter)
        finally:
            painter.end()

    def _paint(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        text = pal.color(pal.ColorRole.WindowText)
        frame = QColor(text)
        frame.setAlpha(90)
        w, h = self.width(), self.height()
        left, right, top, bottom = 46, 8, 8, 18
        pw, ph = max(1, w - left - right), max(1, h - top - bottom)
        painter.setPen(QPen(frame, 1))
        painter.drawRect(left, top, pw, ph)
        painter.setPen(text)
        pts = [(s, v) for s, v in zip(self._steps, self._losses) if math.isfinite(v)]
        if not pts:
            painter.drawText(left, top, pw, ph, Qt.AlignmentFlag.AlignCenter, "loss: no steps yet")
            return
        s0, s1 = pts[0][0], pts[-1][0]
        lo, hi = min(v for _, v in pts), max(v for _, v in pts)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        xs = max(1, s1 - s0)

        def to_xy(step: int, value: float) -> QPointF:
            x = left + (step - s0) / xs * pw if s1 > s0 else left + pw / 2
            y = top + (hi - value) / (hi - lo) * ph
            return QPointF(x, y)

        painter.drawText(2, top, left - 4, 14, Qt.AlignmentFlag.AlignRight, f"{hi:.3g}")
        painter.drawText(2, top + ph - 14, left - 4, 14, Qt.AlignmentFlag.AlignRight, f"{lo:.3g}")
        painter.drawText(left, top + ph + 2, pw, 14, Qt.AlignmentFlag.AlignLeft, f"step {s0}")
        painter.drawText(left, top + ph + 2, pw, 14, Qt.AlignmentFlag.AlignRight, f"step {s1}  loss {pts[-1][1]:.4g}")
        painter.setPen(QPen(QColor(255, 140, 0), 1.6))
        if len(pts) == 1:
            p = to_xy(*pts[0])
            painter.drawEllipse(p, 2.5, 2.5)
        else:
            painter.drawPolyline(QPolygonF([to_xy(s, v) for s, v in pts]))
