"""Shared fixtures: the procedural FLAME-format model and tiny synthetic subjects."""

from __future__ import annotations

from pathlib import Path

import pytest

from headstudio.data.synth.subject import SubjectConfig, make_subject
from headstudio.flame.model import FlameModel
from headstudio.flame.procedural import make_procedural_flame, write_procedural_flame


@pytest.fixture(scope="session")
def procedural():
    return make_procedural_flame(seed=0)


@pytest.fixture(scope="session")
def flame_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("flame") / "generic_model.pkl"
    write_procedural_flame(path, seed=0)
    return path


@pytest.fixture(scope="session")
def flame(flame_path) -> FlameModel:
    return FlameModel.from_file(flame_path, num_shape=100, num_expression=50).double()


TINY = dict(size=64, num_train=4, num_test=4)


@pytest.fixture(scope="session")
def subjects(tmp_path_factory) -> dict[str, Path]:
    """One tiny subject per layout (and a Kinect one), same seed: the same frames."""
    root = tmp_path_factory.mktemp("subjects")
    out = {}
    for name in ("imavatar", "nerface", "insta"):
        out[name] = root / name
        make_subject(out[name], SubjectConfig(format=name, **TINY))
    out["kinect"] = root / "kinect"
    make_subject(out["kinect"], SubjectConfig(kinect=True, **TINY))
    return out
