"""The viewer's Drive panel: source, frame, play/pause and manual FLAME controls (every method).

nerfstudio's viewer collects viewer elements only as attributes of ``nn.Module``s reachable from
the pipeline (not inside lists or dicts) and lists them in the order of ``dir()``, so each control
is an attribute whose name sorts into the panel's order (``c00_source``, ``c01_frame``, ...); the
labels users see are the elements' names. :class:`~headstudio.models.subject_state.SubjectState`
rebuilds its driven state when it next renders and the controls' values (:meth:`DriveControls.key`)
differ from those it last applied (inside the viewer's render lock); nerfstudio re-renders after each
callback. Moving a manual control switches the source to manual.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, List, Sequence, Tuple

import torch
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerDropdown, ViewerSlider
from torch import Tensor, nn

from headstudio.viewer.drive import DriveValues, drive_values_of

TRACKED = "tracked frame"
MANUAL = "manual"

# (attribute, label, DriveValues field, low, high) of the pose controls, radians.
POSE_CONTROLS: Tuple[Tuple[str, str, str, float, float], ...] = (
    ("c04_jaw_open", "jaw open (rad)", "jaw_open", -0.1, 0.6),
    ("c05_jaw_sideways", "jaw sideways (rad)", "jaw_sideways", -0.25, 0.25),
    ("c06_neck_yaw", "neck yaw (rad)", "neck_yaw", -0.8, 0.8),
    ("c07_neck_pitch", "neck pitch (rad)", "neck_pitch", -0.5, 0.5),
    ("c08_neck_roll", "neck roll (rad)", "neck_roll", -0.4, 0.4),
    ("c09_gaze_yaw", "eye gaze yaw (rad)", "gaze_yaw", -0.5, 0.5),
    ("c10_gaze_pitch", "eye gaze pitch (rad)", "gaze_pitch", -0.4, 0.4),
)
EXPRESSION_RANGE = 3.0
"""Manual expression coefficients span ±3 (the synthetic test sequences reach about 2.2)."""


class DriveControls(nn.Module):
    """The Drive panel. ``frame_state(frame)`` gives a tracked frame's (expression, pose)."""

    def __init__(
        self,
        num_frames: int,
        default_frame: int,
        expression_labels: Sequence[str],
        frame_rate: float,
        frame_state: Callable[[int], Tuple[Tensor, Tensor]],
    ) -> None:
        super().__init__()
        self.num_expression_controls = len(expression_labels)
        self.frame_rate = float(frame_rate)
        self._frame_state = frame_state
        self._num_frames = num_frames
        self._play_thread: threading.Thread | None = None
        self._playing = threading.Event()
        self.c00_source = ViewerDropdown(
            "Source", TRACKED, [TRACKED, MANUAL],
            hint="Render a tracked frame, or the manual controls below (moving one switches to manual)",
        )  # fmt: skip
        self.c01_frame = ViewerSlider(
            "Frame", default_frame, 0, num_frames - 1, 1, cb_hook=self._frame_changed,
            hint="Tracked frame rendered (tracked source), or the frame the manual controls start from",
        )  # fmt: skip
        self.c02_play = ViewerButton("Play / Pause", cb_hook=lambda _: self.toggle_play())
        self.c03_reset = ViewerButton("Reset to frame", cb_hook=lambda _: self.reset_to_frame())
        for attr, label, _, low, high in POSE_CONTROLS:
            setattr(self, attr, ViewerSlider(label, 0.0, low, high, 0.01, cb_hook=self._manual_changed))
        for k, label in enumerate(expression_labels):
            slider = ViewerSlider(label, 0.0, -EXPRESSION_RANGE, EXPRESSION_RANGE, 0.05, cb_hook=self._manual_changed)
            setattr(self, self.expression_attr(k), slider)
        self.reset_to_frame(switch=False)

    @staticmethod
    def expression_attr(k: int) -> str:
        return f"c11_expression_{k:03d}"

    # ------------------------------------------------------------------ state
    @property
    def manual(self) -> bool:
        return self.c00_source.value == MANUAL

    @property
    def frame(self) -> int:
        return min(max(int(round(float(self.c01_frame.value))), 0), self._num_frames - 1)

    def expression_sliders(self) -> List[ViewerSlider]:
        return [getattr(self, self.expression_attr(k)) for k in range(self.num_expression_controls)]

    def values(self) -> DriveValues:
        """What the manual controls hold."""
        expression = torch.tensor([float(s.value) for s in self.expression_sliders()], dtype=torch.float32)
        kw = {name: float(getattr(self, attr).value) for attr, _, name, _, _ in POSE_CONTROLS}
        return DriveValues(expression=expression, **kw)

    def set_values(self, values: DriveValues) -> None:
        for attr, _, name, low, high in POSE_CONTROLS:
            getattr(self, attr).value = min(max(float(getattr(values, name)), low), high)
        for k, slider in enumerate(self.expression_sliders()):
            v = float(values.expression[k]) if k < len(values.expression) else 0.0
            slider.value = min(max(v, -EXPRESSION_RANGE), EXPRESSION_RANGE)

    def key(self) -> tuple:
        """Every control's value: the driven state is rebuilt when this changes."""
        sliders = [getattr(self, attr) for attr, *_ in POSE_CONTROLS] + self.expression_sliders()
        return (self.manual, self.frame, *(float(s.value) for s in sliders))

    # ------------------------------------------------------------------ callbacks
    def _frame_changed(self, _element=None) -> None:
        if not self.manual:  # the manual controls show the tracked frame, so manual starts from it
            self.reset_to_frame(switch=False)

    def _manual_changed(self, _element=None) -> None:
        if not self.manual and not self.matches_frame():  # a user's change, not the frame's values arriving
            self.c00_source.value = MANUAL

    def matches_frame(self) -> bool:
        """Whether the manual controls hold the current frame's values (within half a slider step)."""
        expression, pose = self._frame_state(self.frame)
        ref, now = drive_values_of(expression, pose, self.num_expression_controls), self.values()
        for attr, _, name, low, high in POSE_CONTROLS:
            if abs(min(max(getattr(ref, name), low), high) - getattr(now, name)) > 0.005:
                return False
        target = ref.expression.clamp(-EXPRESSION_RANGE, EXPRESSION_RANGE)
        return bool((target - now.expression).abs().max() <= 0.025) if len(target) else True

    def reset_to_frame(self, switch: bool = True) -> None:
        """Copy the current frame's values into the manual controls (and render them)."""
        expression, pose = self._frame_state(self.frame)
        self.set_values(drive_values_of(expression, pose, self.num_expression_controls))
        if switch and not self.manual:
            self.c00_source.value = MANUAL

    def toggle_play(self) -> None:
        """Play steps the Frame slider through the tracked frames at the subject's frame rate; again pauses."""
        if self._playing.is_set():
            self._playing.clear()
            return
        if self.manual:
            self.c00_source.value = TRACKED
        self._playing.set()
        self._play_thread = threading.Thread(target=self._play, name="headstudio-drive-play", daemon=True)
        self._play_thread.start()

    @property
    def playing(self) -> bool:
        return self._playing.is_set()

    def _play(self) -> None:
        period = 1.0 / max(self.frame_rate, 1e-3)
        next_time = time.monotonic()
        while self._playing.is_set():
            self.c01_frame.value = (self.frame + 1) % self._num_frames
            next_time += period
            time.sleep(max(0.0, next_time - time.monotonic()))
