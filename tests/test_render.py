"""hs-render: self- and cross-reenactment and turntable videos of a trained tiny run, and their bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headstudio.data.synth.subject import SubjectConfig, make_subject
from headstudio.utils.video import read_video, write_video
from tests.conftest import TINY, run_cli, run_in_process

from headstudio.scripts import render as scripts_render


def test_slices_and_neutral_frame():
    frames = list(range(10))
    assert scripts_render.parse_slice("2:5", frames) == [2, 3, 4]
    assert scripts_render.parse_slice(":3", frames) == [0, 1, 2] and scripts_render.parse_slice("::4", frames) == [0, 4, 8]
    assert scripts_render.parse_slice(None, frames) == frames and scripts_render.parse_slice("7", frames) == [7]
    for bad in ("12:20", "x", "1:2:0", "3:3"):
        with pytest.raises(ValueError, match="--frames"):
            scripts_render.parse_slice(bad, frames)
    expr, pose = torch.ones(4, 3), torch.zeros(4, 15)
    expr[2] = 0.1
    pose[1, 6] = 0.0
    assert scripts_render.neutral_frame(expr, pose) == 2


def test_video_writer_round_trip(tmp_path):
    frames = np.zeros((5, 33, 41, 3), np.uint8)
    for k in range(5):
        frames[k, :, : 8 * (k + 1)] = 200
    write_video(tmp_path / "v.mp4", frames, 10)
    back = read_video(tmp_path / "v.mp4")
    assert back.shape == (5, 32, 40, 3)  # even sizes for H.264
    assert np.abs(back.astype(float) - frames[:, :32, :40]).mean() < 6
    write_video(tmp_path / "v.gif", frames, 10)
    assert (tmp_path / "v.gif").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif", "v.mp4"]  # no temporary files left
    with pytest.raises(ValueError, match="mp4 or .gif"):
        write_video(tmp_path / "v.avi", frames, 10)


def test_a_driver_that_does_not_parse_is_one_line(tmp_path):
    from headstudio.data.errors import DataError

    broken = tmp_path / "broken"
    (broken / "seq").mkdir(parents=True)
    (broken / "seq" / "flame_params.json").write_text("{not json")
    with pytest.raises(DataError, match="flame_params.json") as info:
        scripts_render.read_driver(broken)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="no such driver"):
        scripts_render.read_driver(tmp_path / "missing")
    with pytest.raises(ValueError, match="--driver is required"):
        scripts_render.CrossReenactment(load_config=tmp_path / "config.yml").main()


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """Another identity with fewer expression coefficients than the avatar's 50."""
    out = tmp_path_factory.mktemp("driver") / "drv"
    make_subject(out, SubjectConfig(seed=3, num_expression=20, **TINY))
    return out


@pytest.mark.e2e
def test_hs_render_self_cross_and_turntable(trained, driver, tmp_path):
    config = trained("tensorf-local-deform")
    res = run_in_process("hs-render", "self", "--load-config", config, "--frames", "0:5", "--output", tmp_path / "self.mp4")
    assert res.returncode == 0, res.stderr[-3000:]
    video = read_video(tmp_path / "self.mp4")
    assert video.shape[0] == 5 and video.shape[2] == 2 * video.shape[1]  # ground truth | render, 64 px each
    truth = video[:, :, :64].astype(float)
    assert truth.std() > 10  # the ground-truth half shows the subject, not a blank
    res = run_in_process("hs-render", "cross", "--load-config", config, "--driver", driver, "--frames", "0:5",
                  "--resolution", "48", "--output", tmp_path / "cross.mp4")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    text = " ".join((res.stdout + res.stderr).split())
    assert "the driver has 20 expression coefficients and the avatar 50" in text
    video = read_video(tmp_path / "cross.mp4")
    assert video.shape[:3] == (5, 48, 96)  # driver | render at 48 px
    assert np.abs(np.diff(video[:, :, 48:].astype(float), axis=0)).mean() > 0.05  # the driven face moves
    res = run_in_process("hs-render", "turntable", "--load-config", config, "--num-views", "6", "--output", tmp_path / "turn.gif")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "6 frames" in " ".join(res.stdout.split())
    # Bad input: one line, exit 1, nothing written.
    res = run_in_process("hs-render", "self", "--load-config", config, "--frames", "100:120", "--output", tmp_path / "bad.mp4")
    assert res.returncode == 1 and "--frames '100:120': no frame in range" in " ".join(res.stdout.split())
    assert not (tmp_path / "bad.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files


@pytest.mark.e2e
@pytest.mark.parametrize("script", ["hs-render", "hs-export"])
def test_console_script_is_wired(script):
    """The installed console script reaches its entry function (the tests call that function in-process)."""
    res = run_cli(script, "--help")
    assert res.returncode == 0 and f"{script}:" in res.stdout
    res = run_cli(script, "no-such-subcommand")
    assert res.returncode == 2 and "usage:" in res.stdout


@pytest.mark.e2e
@pytest.mark.parametrize(("script", "words"), [("hs-synth", "subject"), ("hs-prior", "train"), ("hs-check-data", "layout"), ("hs-track", "VIDEO_OR_FOLDER")])
def test_other_console_scripts_are_wired(script, words):
    """As above, for the commands whose tests run their entry functions in-process (tyro's help)."""
    res = run_cli(script, "--help")
    assert res.returncode == 0 and words in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
