"""Shared engine parts that every method relies on: no import-time side effects, the one-frame
export state, the head-component filter of mesh export, the deformed-field render path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from headstudio.export.components import keep_head_components
from headstudio.pipelines.head_pipeline import FRAME_ENV, fixed_frame_from_env


def test_importing_headstudio_changes_no_global_hook():
    code = (
        "import sys; hook = sys.excepthook\n"
        "import headstudio.dataparsers, headstudio.method_configs.tensorf_local_deform, headstudio.pipelines.head_pipeline\n"
        "print(sys.excepthook is hook)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def test_dataparser_installs_the_one_line_error_handler_when_set_up(subjects):
    from headstudio.data import errors
    from headstudio.dataparsers.flame_video import FlameVideoDataParserConfig

    saved = sys.excepthook
    try:
        sys.excepthook = sys.__excepthook__
        FlameVideoDataParserConfig(data=subjects["imavatar"], one_line_errors=False).setup()
        assert sys.excepthook is sys.__excepthook__
        FlameVideoDataParserConfig(data=subjects["imavatar"]).setup()
        assert sys.excepthook is errors._data_error_hook
    finally:
        sys.excepthook = saved


def test_data_error_hook_prints_one_line_and_passes_other_errors_on(capsys):
    from headstudio.data import errors

    seen = []
    saved_prev = errors._previous_hook
    errors._previous_hook = lambda *a: seen.append(a[0])
    try:
        errors._data_error_hook(errors.DataError, errors.DataError("subject/x.json: frame 3: field 'pose': NaN"), None)
        errors._data_error_hook(KeyError, KeyError("k"), None)
    finally:
        errors._previous_hook = saved_prev
    assert capsys.readouterr().err == "error: subject/x.json: frame 3: field 'pose': NaN\n"
    assert seen == [KeyError]


def test_export_frame_comes_only_from_the_environment(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ns-export", "tsdf"])  # the command name changes nothing
    assert fixed_frame_from_env({}, 10) is None
    assert fixed_frame_from_env({FRAME_ENV: "7"}, 10) == 7
    with pytest.raises(ValueError, match="frames 0..9"):
        fixed_frame_from_env({FRAME_ENV: "10"}, 10)
    with pytest.raises(ValueError, match="expected a frame index"):
        fixed_frame_from_env({FRAME_ENV: "seven"}, 10)


def _cube(offset: float, size: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float32) * size + offset
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])  # fmt: skip
    return v, f


def _tetrahedron(offset: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[0, 0, 0], [0.05, 0, 0], [0, 0.05, 0], [0, 0, 0.05]], dtype=np.float32) + offset
    return v, np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def _sphere(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A closed UV sphere with many faces (the head)."""
    th, ph = np.meshgrid(np.linspace(0.1, np.pi - 0.1, n), np.linspace(0, 2 * np.pi, 2 * n, endpoint=False), indexing="ij")
    v = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    faces = []
    for i in range(n - 1):
        for j in range(2 * n):
            a, b = i * 2 * n + j, i * 2 * n + (j + 1) % (2 * n)
            faces += [[a, b, b + 2 * n], [a, b + 2 * n, a + 2 * n]]
    return v.astype(np.float32), np.array(faces)


def test_head_components_are_kept_and_floaters_dropped():
    head_v, head_f = _sphere()
    parts = [(head_v, head_f), _tetrahedron(3.0), _tetrahedron(-3.0), _cube(5.0, 1.0)]
    verts, faces, offset = [], [], 0
    for v, f in parts:
        verts.append(v)
        faces.append(f + offset)
        offset += len(v)
    verts, faces = np.concatenate(verts), np.concatenate(faces)
    # The big cube (12 faces) is 2.3 % of the head's 528 faces: a floater at 5 %, kept at 1 %.
    v, f, report = keep_head_components(verts, faces, min_fraction=0.05)
    assert report.num_components == 4 and report.kept_components == 1 and report.dropped_faces == 20
    assert len(v) == len(head_v) and len(f) == len(head_f) and f.max() == len(v) - 1
    assert np.allclose(v[f].mean(axis=(0, 1)), head_v[head_f].mean(axis=(0, 1)))  # the same triangles
    _, f, report = keep_head_components(verts, faces, min_fraction=0.01)
    assert report.kept_components == 2 and len(f) == len(head_f) + 12
    assert "dropped 2" in report.describe()
