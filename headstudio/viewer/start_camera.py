"""The viewer's first camera: a training camera looking at the head.

viser starts every client at a fixed default pose that, at headstudio's scale (a head about one
world unit across at the origin), often looks past the head. A ``ViewerControl`` is set up by
nerfstudio's viewer (it collects them from the pipeline like viewer elements); on each new client
it moves the client's camera to a training camera of the subject, orbiting about the head. The
training cameras' frustums (with their images) would then stand between the camera and the head, so
the first client hides them, through the viewer's own Hide/Show Train Cams buttons ("Show Train Cams"
brings them back).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
from jaxtyping import Float
from nerfstudio.viewer.viewer_elements import ViewerControl


def viser_pose(
    camera_to_world: Float[np.ndarray, "3 4"], scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """viser's (wxyz, position, look_at, up) of a nerfstudio (OpenGL) camera-to-world, at viser's scale.

    viser cameras follow OpenCV (looking along +z, y down): its rotation is nerfstudio's rotated by pi
    about x. The orbit centre is the point of the optical axis nearest the world origin (the head)."""
    import viser.transforms as vtf

    c2w = np.asarray(camera_to_world, dtype=np.float64)
    rotation = vtf.SO3.from_matrix(c2w[:3, :3]) @ vtf.SO3.from_x_radians(np.pi)
    position = c2w[:3, 3] * scale
    look = -c2w[:3, 2]
    look_at = position + look * max(float(-position @ look), 1e-3 * scale)
    return rotation.wxyz, position, look_at, c2w[:3, 1].copy()


class StartAtTrainingCamera(ViewerControl):
    """On each new viewer client, move its camera to ``camera_to_world`` with vertical field of view ``fov``."""

    def __init__(self, camera_to_world: np.ndarray, fov: float, wait_s: float = 5.0) -> None:
        self.camera_to_world = np.asarray(camera_to_world, dtype=np.float64)[:3, :4]
        self.fov = float(fov)
        self.wait_s = wait_s
        self._hid_cameras = False

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        self.viser_server.on_client_connect(self._on_connect)

    def _on_connect(self, client) -> None:
        threading.Thread(target=self._place, args=(client,), daemon=True).start()

    def _place(self, client) -> None:
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        deadline = time.monotonic() + self.wait_s
        while client.camera._state.update_timestamp == 0.0:  # the client has not sent its camera yet
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        wxyz, position, look_at, up = viser_pose(self.camera_to_world, VISER_NERFSTUDIO_SCALE_RATIO)
        with client.atomic():
            client.camera.up_direction = up
            client.camera.fov = self.fov
            client.camera.position = position
            client.camera.look_at = look_at
            client.camera.wxyz = wxyz
        viewer = self.viewer
        # A client can connect while the viewer is still adding the frustums (init_scene loads each camera's
        # image): wait until they are all there, else the late ones would stay visible.
        expected = _expected_frustums(viewer)
        deadline = time.monotonic() + 120.0
        while len(getattr(viewer, "camera_handles", {})) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self._hid_cameras and getattr(viewer, "hide_images", None) is not None and viewer.hide_images.visible:
            self._hid_cameras = True
            viewer.set_camera_visibility(False)
            viewer.toggle_cameravis_button()


def _expected_frustums(viewer) -> int:
    """How many training-camera frustums nerfstudio's viewer draws (0 if it cannot tell)."""
    try:
        total = len(viewer.pipeline.datamanager.train_dataset)
        limit = int(viewer.config.max_num_display_images)
    except (AttributeError, TypeError):
        return 0
    return total if limit < 0 else min(limit, total)


def vertical_fov(fy: float, height: float) -> float:
    return 2.0 * math.atan(0.5 * height / fy)
