"""The IRNet panel's input: image, checkpoint, classes, intensity, channels, device."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton, Select, create_widget
from napari.layers import Image

from ...pipeline.inference import describe_device, device_choices
from .. import layers
from ..recent import checkpoint_choices
from . import Section


class InputBox(Section):
    """What a Run takes: the image layer, the checkpoint (Browse…), the classes, how pixels become the input, the device.

    ``class_choices()`` gives the checkpoint's classes (once it has been read).
    """

    def __init__(self, class_choices: Callable[[], list[str]]) -> None:
        super().__init__("Input")
        self._extra_checkpoint: str | None = None  # a file chosen that the recent list does not hold (yet)
        self.known_classes = class_choices
        self.image = create_widget(annotation=Image, label="image", name="image")
        self.checkpoint = ComboBox(label="checkpoint", name="checkpoint", choices=self._checkpoint_choices)
        self.browse = PushButton(text="Browse…", name="browse", tooltip="Choose a checkpoint file (.pt, .pth)")
        self.classes = Select(label="classes", name="classes", choices=lambda *_: list(class_choices()))
        self.classes.tooltip = "The classes present in this image (image-level labels); none chosen: the classifier decides"
        self.classes.native.setMaximumHeight(72)
        self.intensity = ComboBox(label="intensity", name="intensity", choices=list(layers.INTENSITY_MODES.items()), value="contrast")
        self.intensity.tooltip = (
            "How the image's values become the networks' 8-bit input: as the layer shows them (its contrast limits), "
            "or stretched between percentiles or minimum and maximum"
        )
        self.channels = LineEdit(label="channels", name="channels", value="")
        self.channels.tooltip = "For a (channels, H, W) image: one channel (gray) or three (red green blue), e.g. '0' or '0 2 1'"
        self.device = ComboBox(label="device", name="device", choices=device_choices(), value="auto")
        self.device_in_use = Label(label="in use", name="device_in_use", value=describe_device("auto"))
        ckpt_row = Container(widgets=[self.checkpoint, self.browse], layout="horizontal", labels=False, label="checkpoint")
        form = Container(
            widgets=[self.image, ckpt_row, self.classes, self.intensity, self.channels, self.device, self.device_in_use],
            name="input_box",
        )
        self.extend([form])
        self.device.changed.connect(lambda v: setattr(self.device_in_use, "value", describe_device(v)))
        self.browse.changed.connect(self._browse_checkpoint)

    def _checkpoint_choices(self, *_) -> list[tuple[str, str]]:
        choices = checkpoint_choices()
        current = self._extra_checkpoint
        if current and current not in [c[1] for c in choices]:
            choices.insert(0, (Path(current).name, current))
        return choices

    def choose_checkpoint(self, path: str | Path) -> None:
        """Show the checkpoint file ``path`` chosen (added to the menu)."""
        path = str(Path(path).expanduser())
        self._extra_checkpoint = path
        self.checkpoint.reset_choices()
        self.checkpoint.value = path

    def _browse_checkpoint(self, *_) -> None:
        from qtpy.QtWidgets import QFileDialog

        start = str(Path(self.checkpoint.value).parent) if self.checkpoint.value else ""
        path, _ = QFileDialog.getOpenFileName(
            self.native, "Choose a napari-irnet checkpoint", start, "Checkpoints (*.pt *.pth);;All files (*)"
        )
        if path:
            self.choose_checkpoint(path)

    def network_input(self, layer) -> np.ndarray:
        """The layer's pixels as the networks take them (intensity and channels as chosen here)."""
        channels = layers.parse_channels(self.channels.value)
        return layers.layer_to_rgb8(layer, self.intensity.value, channels)

    def show_classes(self, keep: list[str]) -> None:
        """The class menu again from the checkpoint's classes, with ``keep`` chosen."""
        self.classes.reset_choices()
        self.classes.value = keep
