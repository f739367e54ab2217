"""Driving the avatar: the Drive panel's state, the subject's driven row, and every method rendering it."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from headstudio.viewer.controls import MANUAL, TRACKED
from headstudio.viewer.drive import DriveValues, compose_drive, drive_values_of, nearest_frame, transfer_expression
from tests.conftest import method_pipeline


def test_compose_and_read_back_the_controls():
    base_e, base_p = torch.randn(20), 0.1 * torch.randn(15)
    values = DriveValues(torch.arange(5.0), jaw_open=0.4, jaw_sideways=-0.1, neck_yaw=0.3, neck_pitch=0.2,
                         neck_roll=-0.05, gaze_yaw=0.15, gaze_pitch=-0.1)  # fmt: skip
    e, p = compose_drive(base_e, base_p, values)
    assert torch.equal(e[:5], torch.arange(5.0)) and torch.equal(e[5:], base_e[5:])  # the rest: the base frame's
    assert p[6].item() == pytest.approx(0.4) and p[7].item() == pytest.approx(-0.1)  # jaw pitch opens, yaw sideways
    assert p[3:6].tolist() == pytest.approx([0.2, 0.3, -0.05])  # neck pitch, yaw, roll
    assert p[9:11].tolist() == pytest.approx([-0.1, 0.15]) and p[12:14].tolist() == pytest.approx([-0.1, 0.15])
    assert torch.equal(p[:3], base_p[:3]) and p[8] == base_p[8]  # global pose and jaw roll untouched
    back = drive_values_of(e, p, 5)
    assert compose_drive(base_e, base_p, back)[1].allclose(p) and torch.equal(back.expression, values.expression)


def test_nearest_frame_in_expression_space():
    expr = torch.zeros(4, 3)
    expr[2, 0] = 1.0
    pose = torch.zeros(4, 15)
    pose[3, 6] = 0.5  # frame 3 has the jaw open
    assert nearest_frame(expr, pose, [0, 1, 2, 3], torch.tensor([0.9, 0, 0]), torch.zeros(15)) == 2
    jaw = torch.zeros(15)
    jaw[6] = 0.45
    assert nearest_frame(expr, pose, [0, 1, 2, 3], torch.zeros(3), jaw) == 3
    assert nearest_frame(expr, pose, [0, 1], torch.zeros(3), jaw) in (0, 1)  # only candidates


def test_expression_transfer_offsets_and_dimension_warnings():
    drv = torch.tensor([[1.0, 2.0], [1.5, 2.0]])
    out, warning = transfer_expression(drv, torch.tensor([1.0, 2.0]), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(out, torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.2, 0.3]]))
    assert "2 expression coefficients" in warning and "avatar 3" in warning and "padded" in warning
    out, warning = transfer_expression(drv, drv[0], torch.tensor([0.5]))
    assert torch.allclose(out, torch.tensor([[0.5], [1.0]])) and "kept the driver's first 1" in warning
    assert transfer_expression(drv, drv[0], torch.zeros(2))[1] == ""


def _viewer_camera(pipeline):
    camera = copy.deepcopy(pipeline.datamanager.train_dataset.cameras[0:1])
    camera.metadata = None  # what the viewer sends: no frame
    return camera


def _render(model, camera):
    torch.manual_seed(0)
    with torch.no_grad():
        return model.get_outputs_for_camera(camera)["rgb"]


def _check_drive(pipeline):
    model = pipeline.model
    model.eval()
    subject, drive = model.subject, model.subject.drive
    camera = _viewer_camera(pipeline)
    frame = subject.train_frames[1]
    drive.c01_frame.value = frame
    drive.c00_source.value = TRACKED
    tracked = _render(model, camera)
    drive.reset_to_frame()  # the frame's values into the sliders, source manual
    assert drive.manual
    manual = _render(model, camera)
    assert (manual - tracked).abs().max() < 1e-4  # manual with the frame's values renders that frame
    for codes in [m for m in model.modules() if type(m).__name__ == "FrameCodes"]:
        assert int(codes.resolve(torch.tensor(subject.driven_frame))) == int(codes.resolve(torch.tensor(frame)))
    chin_before = subject.track.landmarks[subject.driven_frame, 8].clone()
    drive.c04_jaw_open.value = 0.5
    opened = _render(model, camera)
    chin_after = subject.track.landmarks[subject.driven_frame, 8]
    assert (chin_after - chin_before)[1] < -0.02  # the driven FLAME jaw opened: the chin moved down (world y up)
    assert (opened - manual).abs().max() > 1e-4  # and the picture changed
    drive.c04_jaw_open.value = float(subject.track.pose[frame, 6])
    drive.c00_source.value = TRACKED
    drive.c01_frame.value = subject.default_frame


@pytest.mark.parametrize("method", ["tensorf-local-deform", "rignerf-star", "imavatar-surface"])
def test_manual_drive_renders_through_the_driven_row(method, subjects):
    overrides = {
        "tensorf-local-deform": dict(init_resolution=24, final_resolution=32, num_uniform_samples=24, num_samples=8),
        "rignerf-star": dict(layer_width=32, num_coarse_samples=16, num_importance_samples=8),
        "imavatar-surface": dict(geometry_dims=(96, 96), geometry_skip=(1,), feature_dim=8, deformation_dims=(16, 16),
                                 texture_dims=(16,), num_steps=8, num_secant_steps=2, chunk_steps=8),  # fmt: skip
    }[method]
    pipeline = method_pipeline(method, subjects["imavatar"], **overrides)
    pipeline.datamanager.train_dataset.cameras.rescale_output_resolution(0.5)
    _check_drive(pipeline)
    labels = [s.name for s in pipeline.model.subject.drive.expression_sliders()]
    assert labels[:3] == ["smile", "lips apart", "lip pucker"] and len(labels) == 10  # the model's names, K = 10


def test_drive_controls_play_and_labels_without_names(subjects):
    from headstudio.viewer.controls import DriveControls

    states = {f: (torch.full((4,), float(f)), torch.zeros(15)) for f in range(5)}
    drive = DriveControls(5, 0, ["expression 0", "expression 1"], 50.0, lambda f: states[f])
    assert [s.name for s in drive.expression_sliders()] == ["expression 0", "expression 1"]
    drive.toggle_play()
    try:
        deadline = time.monotonic() + 5.0
        while drive.frame == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert drive.frame != 0 and drive.playing and drive.c00_source.value == TRACKED
    finally:
        drive.toggle_play()
    assert not drive.playing
    drive.c01_frame.value = 3
    drive._frame_changed()  # the viewer's callback on the Frame slider: the sliders show the frame, source stays
    assert drive.c00_source.value == TRACKED and drive.values().expression.tolist() == [3.0, 3.0]
    drive._manual_changed()  # the callbacks of those programmatic changes do not switch to manual
    assert drive.c00_source.value == TRACKED
    getattr(drive, drive.expression_attr(0)).value = 1.0
    drive._manual_changed()  # a user's change does
    assert drive.c00_source.value == MANUAL
    drive.c01_frame.value = 2
    drive.reset_to_frame()
    assert drive.values().expression.tolist() == [2.0, 2.0]


def test_official_style_model_without_names_gets_numbered_labels(flame_path, tmp_path):
    from headstudio.flame.files import load_flame_arrays
    from headstudio.flame.model import FlameModel
    from headstudio.flame.official_writer import dump_official_style
    from headstudio.flame.safe_pickle import safe_load_pickle

    data = dict(safe_load_pickle(flame_path))
    data.pop("expression_names")  # as the official generic_model.pkl: no names
    dump_official_style(data, tmp_path / "generic_model.pkl")
    assert load_flame_arrays(tmp_path / "generic_model.pkl").expression_names == ()
    flame = FlameModel(load_flame_arrays(tmp_path / "generic_model.pkl"), num_expression=12)
    assert flame.expression_label(0) == "expression 0" and flame.expression_label(11) == "expression 11"
    assert FlameModel.from_file(flame_path, num_expression=12).expression_label(4) == "smile left"
