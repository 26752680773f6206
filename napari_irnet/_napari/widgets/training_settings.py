"""The Fine-tune panel's training settings: the ``TrainParams`` fields it sets, and the device."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, SpinBox

from ...params import TrainParams
from ...pipeline.inference import describe_device, device_choices
from ..finetune_jobs import PANEL_TRAIN_PARAMS
from . import Section


class TrainingSettings(Section):
    """One control per field of :data:`PANEL_TRAIN_PARAMS` (named by it, as on the command line), and the device."""

    def __init__(self) -> None:
        super().__init__("Training", labels=True)
        defaults = TrainParams()
        self.finetune_epochs = SpinBox(label="epochs", name="finetune_epochs", min=1, max=10_000, value=defaults.finetune_epochs)
        self.finetune_learning_rate = FloatSpinBox(
            label="learning rate", name="finetune_learning_rate", min=1e-6, max=1.0, step=1e-3, value=defaults.finetune_learning_rate
        )
        self.finetune_learning_rate.native.setDecimals(6)
        self.correction_weight = SpinBox(label="correction weight", name="correction_weight", min=1, max=1000, value=defaults.correction_weight)
        self.correction_weight.tooltip = "How many times a corrected image is drawn per epoch (a weakly labelled one: once)"
        self.weak_displacement_weight = FloatSpinBox(
            label="weak displ. weight", name="weak_displacement_weight", min=0.0, max=1.0, step=0.05,
            value=defaults.weak_displacement_weight,
        )  # fmt: skip
        self.weak_displacement_weight.tooltip = (
            "How much the uncorrected images' weak labels teach the displacement (instance centres) next to the corrections: "
            "1 as much, 0 not at all"
        )
        self.finetune_reset_displacement = CheckBox(
            text="relearn the displacement", name="finetune_reset_displacement",
            value=defaults.finetune_reset_displacement,
        )  # fmt: skip
        self.finetune_reset_displacement.tooltip = (
            "Always start the displacement branch (instance centres) afresh and learn it from the corrections. "
            "Unticked, this happens only when the model's field has collapsed on the corrected images "
            "(it finds one instance per region)"
        )
        self.finetune_cam = CheckBox(text="CAM learns the corrected classes", name="finetune_cam", value=defaults.finetune_cam)
        self.finetune_cam.tooltip = "Also train the CAM network per pixel on the class maps of the corrected images"
        self.device = ComboBox(label="device", name="device", choices=device_choices(), value="auto")
        self.device_in_use = Label(label="in use", name="device_in_use", value=describe_device("auto"))
        self.controls = {name: getattr(self, name) for name in PANEL_TRAIN_PARAMS}
        self.extend([*self.controls.values(), self.device, self.device_in_use])
        self.device.changed.connect(lambda v: setattr(self.device_in_use, "value", describe_device(v)))

    def settings(self) -> dict[str, Any]:
        """The TrainParams fields set here."""
        return {
            "finetune_epochs": int(self.finetune_epochs.value),
            "finetune_learning_rate": float(self.finetune_learning_rate.value),
            "correction_weight": int(self.correction_weight.value),
            "weak_displacement_weight": float(self.weak_displacement_weight.value),
            "finetune_reset_displacement": bool(self.finetune_reset_displacement.value),
            "finetune_cam": bool(self.finetune_cam.value),
        }

    def show(self, train_params: TrainParams) -> None:
        """Show a checkpoint's own fine-tuning settings."""
        for name, control in self.controls.items():
            control.value = getattr(train_params, name)

    def enable(self, enabled: bool) -> None:
        for control in (*self.controls.values(), self.device):
            control.enabled = enabled
