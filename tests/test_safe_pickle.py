"""Tests for headstudio.flame.safe_pickle (allow-list loading) and headstudio.flame.official_writer (writing)."""

from __future__ import annotations

import codecs
import io
import os
import pickle
import pickletools
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sparse
import torch

from headstudio.flame.official_writer import dump_official_style
from headstudio.flame.safe_pickle import (
    FlameFileError,
    UnsafePickleError,
    safe_load_npy_dict,
    safe_load_pickle,
)

RNG = np.random.default_rng(0)


def small_flame(num_verts: int = 7) -> dict:
    """A tiny FLAME-shaped dict (5 joints)."""
    regressor = np.zeros((5, num_verts))
    regressor[np.arange(5), np.arange(5)] = 0.5
    regressor[np.arange(5), (np.arange(5) + 1) % num_verts] = 0.5
    return {
        "v_template": RNG.normal(size=(num_verts, 3)),
        "f": np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 0, 1]], dtype=np.uint32),
        "weights": RNG.random((num_verts, 5)),
        "posedirs": RNG.normal(size=(num_verts, 3, 36)),
        "shapedirs": RNG.normal(size=(num_verts, 3, 6)),
        "J_regressor": regressor,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": RNG.normal(size=(5, 3)),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def globals_of(blob: bytes) -> list[str]:
    """'module name' of every GLOBAL opcode in a protocol <= 3 pickle."""
    return [arg for op, arg, _ in pickletools.genops(blob) if op.name == "GLOBAL"]


# --- Python 2 protocol 2 opcodes, written by hand ---------------------------------------


def p2_str(data: bytes | str) -> bytes:
    """A Python 2 ``str`` (SHORT_BINSTRING / BINSTRING)."""
    if isinstance(data, str):
        data = data.encode("ascii")
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def p2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def p2_tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def p2_array(arr: np.ndarray) -> bytes:
    """numpy array as numpy wrote it under Python 2, protocol 2."""
    arr = np.ascontiguousarray(arr)
    descr = {"f8": b"f8", "i8": b"i8", "i4": b"i4", "u4": b"u4"}[arr.dtype.str[1:]]
    dtype = (
        b"cnumpy\ndtype\n" + p2_tuple([p2_str(descr), p2_int(0), p2_int(1)]) + b"R"
        + p2_tuple([p2_int(3), p2_str("<"), b"N", b"N", b"N", b"J\xff\xff\xff\xff", b"J\xff\xff\xff\xff", p2_int(0)])
        + b"b"
    )
    head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + p2_int(0) + b"\x85" + p2_str("b") + b"\x87R"
    shape = p2_tuple([p2_int(s) for s in arr.shape])
    state = p2_tuple([p2_int(1), shape, dtype, b"\x89", p2_str(arr.tobytes())])
    return head + state + b"b"


def p2_chumpy_ch(arr: np.ndarray) -> bytes:
    """chumpy.ch.Ch under protocol 2: NEWOBJ, then the __getstate__ dict, then BUILD."""
    state = (
        b"}("
        + p2_str("_dirty_vars") + b"c__builtin__\nset\n]" + p2_str("x") + b"a\x85R"
        + p2_str("_itr") + b"N"
        + p2_str("_make_dense") + b"\x89"
        + p2_str("_make_sparse") + b"\x89"
        + p2_str("_depends_on_deps") + b"}"
        + p2_str("x") + p2_array(arr)
        + b"u"
    )
    return b"cchumpy.ch\nCh\n)\x81" + state + b"b"


def p2_csc(matrix: sparse.csc_matrix) -> bytes:
    """scipy.sparse.csc.csc_matrix of a Python 2 era scipy: NEWOBJ + __dict__ + BUILD."""
    shape = p2_tuple([p2_int(s) for s in matrix.shape])
    state = (
        b"}("
        + p2_str("_shape") + shape
        + p2_str("maxprint") + p2_int(50)
        + p2_str("indices") + p2_array(matrix.indices.astype(np.int32))
        + p2_str("indptr") + p2_array(matrix.indptr.astype(np.int32))
        + p2_str("data") + p2_array(matrix.data.astype(np.float64))
        + b"u"
    )
    return b"cscipy.sparse.csc\ncsc_matrix\n)\x81" + state + b"b"


def p2_dict(entries: dict[str, bytes]) -> bytes:
    body = b"".join(p2_str(k) + v for k, v in entries.items())
    return b"\x80\x02}(" + body + b"u."


# --- Python 2 protocol 0 (text) opcodes ----------------------------------------------


def p0_str(data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode("latin-1")
    return b"S'" + codecs.escape_encode(data)[0] + b"'\n"


def p0_array(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    shape = b"(" + b"".join(b"I%d\n" % s for s in arr.shape) + b"t"
    dtype = b"cnumpy\ndtype\n(" + p0_str(arr.dtype.str[1:]) + b"I0\nI1\ntR(I3\n" + p0_str("<") + b"NNNI-1\nI-1\nI0\ntb"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\nt" + p0_str("b") + b"tR"
        + b"(I1\n" + shape + dtype + b"I00\n" + p0_str(arr.tobytes()) + b"tb"
    )


def p0_chumpy_ch(arr: np.ndarray) -> bytes:
    """chumpy.ch.Ch under protocols 0/1: copy_reg._reconstructor(Ch, object, None) + BUILD."""
    return (
        b"ccopy_reg\n_reconstructor\n(cchumpy.ch\nCh\nc__builtin__\nobject\nNtR"
        + b"(d" + p0_str("x") + p0_array(arr) + b"s" + p0_str("_itr") + b"Ns"
        + p0_str("_dirty_vars") + b"c__builtin__\nset\n((l" + p0_str("x") + b"atRs"
        + b"b"
    )


# --- round trip and layout -------------------------------------------------------------


def test_round_trip_through_official_layout(tmp_path: Path) -> None:
    data = small_flame()
    path = tmp_path / "generic_model.pkl"
    keys = ("v_template", "shapedirs", "weights", "J", "posedirs")
    dump_official_style(data, path, chumpy_keys=keys)
    assert sorted(os.listdir(tmp_path)) == ["generic_model.pkl"]  # no temporary file left
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules

    loaded = safe_load_pickle(path)
    assert set(loaded) == set(data)
    for key in keys:
        assert isinstance(loaded[key], np.ndarray) and loaded[key].dtype == np.float64
        np.testing.assert_array_equal(loaded[key], data[key])
    # J_regressor comes back sparse (scipy.sparse.csc_matrix), not densified.
    assert sparse.issparse(loaded["J_regressor"]) and loaded["J_regressor"].format == "csc"
    np.testing.assert_array_equal(loaded["J_regressor"].toarray(), data["J_regressor"])
    np.testing.assert_array_equal(loaded["f"], data["f"])
    assert loaded["f"].dtype == np.uint32
    np.testing.assert_array_equal(loaded["kintree_table"], data["kintree_table"])
    assert loaded["bs_style"] == "lbs" and loaded["bs_type"] == "lrotmin"


def test_official_layout_globals_and_protocol(tmp_path: Path) -> None:
    path = tmp_path / "generic_model.pkl"
    dump_official_style(small_flame(), path)
    blob = path.read_bytes()
    assert blob[:2] == b"\x80\x02"
    found = globals_of(blob)
    assert set(found) == {
        "chumpy.ch Ch",
        "scipy.sparse.csc csc_matrix",
        "numpy.core.multiarray _reconstruct",
        "numpy ndarray",
        "numpy dtype",
        "__builtin__ set",
    }
    ops = [op.name for op, _, _ in pickletools.genops(blob)]
    assert "NEWOBJ" in ops and "BINUNICODE" not in ops and "SHORT_BINBYTES" not in ops  # Python 2 str only
    # Default: only shapedirs is a chumpy object (as SMPL/FLAME's save_model leaves it).
    assert found.count("chumpy.ch Ch") == 1


def test_official_layout_loads_with_plain_unpickler_and_stand_in_chumpy(tmp_path: Path) -> None:
    """What DECA-style code sees: a Ch whose state holds 'x', a csc_matrix with __dict__ state."""

    class Ch:  # stand-in for chumpy.ch.Ch, test-local
        def __setstate__(self, state: dict) -> None:
            self.__dict__.update(state)

    class Reader(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) == ("chumpy.ch", "Ch"):
                return Ch
            if (module, name) == ("scipy.sparse.csc", "csc_matrix"):
                return sparse.csc_matrix
            return super().find_class(module, name)

    data = small_flame()
    path = tmp_path / "generic_model.pkl"
    dump_official_style(data, path)
    with open(path, "rb") as f:
        raw = Reader(f, encoding="latin1").load()
    ch = raw["shapedirs"]
    assert isinstance(ch, Ch)
    assert set(vars(ch)) == {"x", "_dirty_vars", "_itr", "_make_dense", "_make_sparse", "_depends_on_deps"}
    np.testing.assert_array_equal(ch.x, data["shapedirs"])
    np.testing.assert_array_equal(raw["J_regressor"].toarray(), data["J_regressor"])
    np.testing.assert_array_equal(raw["v_template"], data["v_template"])


def test_dump_leaves_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "generic_model.pkl"
    dump_official_style(small_flame(), path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        dump_official_style({"bad": lambda: None}, path)  # a lambda cannot be pickled
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["generic_model.pkl"]


# --- hand-built pickles that mimic the official file -----------------------------------


def test_hand_built_python2_protocol2_file_loads(tmp_path: Path) -> None:
    data = small_flame()
    regressor = sparse.csc_matrix(data["J_regressor"])
    blob = p2_dict(
        {
            "shapedirs": p2_chumpy_ch(data["shapedirs"]),
            "v_template": p2_chumpy_ch(data["v_template"]),
            "J_regressor": p2_csc(regressor),
            "f": p2_array(data["f"]),
            "kintree_table": p2_array(data["kintree_table"]),
            "bs_style": p2_str("lbs"),
        }
    )
    pickletools.dis(blob, out=io.StringIO())  # well-formed
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(blob)
    loaded = safe_load_pickle(path)
    np.testing.assert_array_equal(loaded["shapedirs"], data["shapedirs"])
    np.testing.assert_array_equal(loaded["v_template"], data["v_template"])
    np.testing.assert_array_equal(loaded["J_regressor"].toarray(), data["J_regressor"])
    np.testing.assert_array_equal(loaded["f"], data["f"])
    np.testing.assert_array_equal(loaded["kintree_table"], data["kintree_table"])
    assert loaded["bs_style"] == "lbs"


def test_hand_built_python2_protocol0_reconstructor_file_loads(tmp_path: Path) -> None:
    arr = RNG.normal(size=(4, 3, 2))
    faces = np.arange(6).reshape(2, 3)
    blob = b"(d" + p0_str("shapedirs") + p0_chumpy_ch(arr) + b"s" + p0_str("f") + p0_array(faces) + b"s."
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(blob)
    loaded = safe_load_pickle(path)
    np.testing.assert_array_equal(loaded["shapedirs"], arr)
    np.testing.assert_array_equal(loaded["f"], faces)


def test_chumpy_select_node_is_evaluated(tmp_path: Path) -> None:
    """chumpy.reordering.Select (as in MANO's shapedirs): a.ravel()[idxs].reshape(preferred_shape)."""
    base = RNG.normal(size=(3, 2, 4))
    idxs = np.arange(base.size).reshape(base.shape)[:, :, :2].ravel()
    select_state = (
        b"}(" + p2_str("a") + p2_chumpy_ch(base) + p2_str("idxs") + p2_array(idxs.astype(np.int64))
        + p2_str("preferred_shape") + p2_tuple([p2_int(3), p2_int(2), p2_int(2)]) + b"u"
    )
    blob = p2_dict({"shapedirs": b"cchumpy.reordering\nSelect\n)\x81" + select_state + b"b"})
    path = tmp_path / "model.pkl"
    path.write_bytes(blob)
    np.testing.assert_array_equal(safe_load_pickle(path)["shapedirs"], base[:, :, :2])


def test_chumpy_object_without_array_is_an_error(tmp_path: Path) -> None:
    blob = p2_dict({"shapedirs": b"cchumpy.ch_ops\nadd\n)\x81}(" + p2_str("a") + b"Nub"})
    path = tmp_path / "model.pkl"
    path.write_bytes(blob)
    with pytest.raises(FlameFileError, match=r"model\.pkl: cannot evaluate chumpy object chumpy\.ch_ops\.add"):
        safe_load_pickle(path)


def test_masks_pickle_with_modern_protocols(tmp_path: Path) -> None:
    masks = {"face": np.arange(10), "lips": np.array([3, 4, 5])}
    for protocol in (2, 4, 5):
        path = tmp_path / f"FLAME_masks_{protocol}.pkl"
        path.write_bytes(pickle.dumps(masks, protocol=protocol))
        loaded = safe_load_pickle(path)
        assert set(loaded) == {"face", "lips"}
        np.testing.assert_array_equal(loaded["lips"], masks["lips"])


# --- malicious pickles -----------------------------------------------------------------


class _Payload:
    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _malicious(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}".encode()
    code = f"open({str(marker)!r}, 'w').close()".encode()
    return {
        "os.system": b"cos\nsystem\n(S'" + cmd + b"'\ntR.",
        "posix.system": b"cposix\nsystem\n(S'" + cmd + b"'\ntR.",
        "builtins.eval": b"c__builtin__\neval\n(S\"" + code + b"\"\ntR.",
        "builtins.exec": b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93\x8c" + bytes([len(code)]) + code + b"\x85R.",
        "subprocess.Popen": b"csubprocess\nPopen\n((S'touch'\nS'" + str(marker).encode() + b"'\nltR.",
        "builtins.getattr": b"c__builtin__\ngetattr\n(cos\nsystem\nS'__call__'\ntR.",
        "reduce": pickle.dumps(_Payload(os.system, (f"touch {marker}",)), protocol=2),
        "reduce-in-chumpy-state": p2_dict(
            {
                "shapedirs": b"cchumpy.ch\nCh\n)\x81}(" + p2_str("x")
                + b"cos\nsystem\n" + p2_str(f"touch {marker}") + b"\x85Rub"
            }
        ),
    }


@pytest.mark.parametrize(
    "kind",
    ["os.system", "posix.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "builtins.getattr", "reduce",
     "reduce-in-chumpy-state"],
)
def test_malicious_pickle_is_refused(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(_malicious(marker)[kind])
    with pytest.raises(UnsafePickleError) as info:
        safe_load_pickle(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: refused to load global '")
    assert "not on headstudio's allow-list" in message
    assert not marker.exists()


def test_refusal_message_names_the_global(tmp_path: Path) -> None:
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(b"cposix\nsystem\n(S'true'\ntR.")
    with pytest.raises(UnsafePickleError) as info:
        safe_load_pickle(path)
    assert str(info.value) == (
        f"{path}: refused to load global 'posix.system' (not on headstudio's allow-list; a pickle can run code)"
    )


def test_malicious_torch_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    inner = io.BytesIO()
    torch.save(_Payload(os.system, (f"touch {marker}",)), inner, _use_new_zipfile_serialization=False)
    outer = pickle.dumps(_Payload(torch.storage._load_from_bytes, (inner.getvalue(),)), protocol=2)
    path = tmp_path / "landmarks.pkl"
    path.write_bytes(outer)
    with pytest.raises(UnsafePickleError, match="landmarks.pkl: refused an embedded torch payload"):
        safe_load_pickle(path)
    assert not marker.exists()


# --- unreadable files ------------------------------------------------------------------


def test_truncated_pickle_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "generic_model.pkl"
    dump_official_style(small_flame(), path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FlameFileError) as info:
        safe_load_pickle(path)
    assert not isinstance(info.value, UnsafePickleError)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable pickle (truncated or corrupt): ")
    assert "\n" not in message


@pytest.mark.parametrize("blob", [b"", b"<html>not a pickle</html>", b"\x80\x02}q\x00(U\x01x"])
def test_corrupt_pickle_is_flame_file_error(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(blob)
    with pytest.raises(FlameFileError, match="generic_model.pkl: not a readable pickle"):
        safe_load_pickle(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FlameFileError, match="nothing.pkl: pickle file not found"):
        safe_load_pickle(tmp_path / "nothing.pkl")
    with pytest.raises(FlameFileError, match="nothing.npy: .npy file not found"):
        safe_load_npy_dict(tmp_path / "nothing.npy")


# --- DECA-style .npy -------------------------------------------------------------------


@pytest.fixture
def no_pickle_np_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything calls np.load(allow_pickle=True)."""
    real = np.load

    def guarded(*args, **kwargs):
        assert not kwargs.get("allow_pickle"), "np.load(allow_pickle=True) was called"
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "load", guarded)


def test_deca_landmark_npy_with_torch_tensors(tmp_path: Path, no_pickle_np_load: None) -> None:
    dyn_faces = torch.randint(0, 9976, (79, 17))
    dyn_bary = torch.rand(79, 17, 3)
    embedding = {
        "static_lmk_faces_idx": np.arange(51, dtype=np.int64),
        "static_lmk_bary_coords": RNG.random((51, 3)),
        "dynamic_lmk_faces_idx": dyn_faces,
        "dynamic_lmk_bary_coords": dyn_bary,
        "full_lmk_faces_idx": np.arange(68, dtype=np.int64)[None],
        "full_lmk_bary_coords": RNG.random((1, 68, 3)),
    }
    path = tmp_path / "landmark_embedding.npy"
    np.save(path, embedding)
    blob = path.read_bytes()
    assert b"torch._utils" in blob and b"_load_from_bytes" in blob

    loaded = safe_load_npy_dict(path)
    assert isinstance(loaded, dict) and set(loaded) == set(embedding)
    for key, value in embedding.items():
        assert isinstance(loaded[key], np.ndarray), key
        expected = value.numpy() if isinstance(value, torch.Tensor) else value
        np.testing.assert_array_equal(loaded[key], expected)
    assert loaded["dynamic_lmk_faces_idx"].dtype == np.int64
    assert loaded["dynamic_lmk_bary_coords"].dtype == np.float32


def test_numeric_npy_is_returned_as_array(tmp_path: Path, no_pickle_np_load: None) -> None:
    path = tmp_path / "lmks.npy"
    arr = RNG.normal(size=(68, 3))
    np.save(path, arr)
    np.testing.assert_array_equal(safe_load_npy_dict(path), arr)


def test_malicious_npy_payload_is_refused(tmp_path: Path, no_pickle_np_load: None) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "landmark_embedding.npy"
    np.save(path, {"static_lmk_faces_idx": _Payload(os.system, (f"touch {marker}",))}, allow_pickle=True)
    with pytest.raises(UnsafePickleError, match=r"landmark_embedding\.npy: refused to load global 'posix\.system'"):
        safe_load_npy_dict(path)
    assert not marker.exists()


def test_corrupt_npy(tmp_path: Path) -> None:
    path = tmp_path / "landmark_embedding.npy"
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(FlameFileError, match=r"landmark_embedding\.npy: not a readable \.npy file"):
        safe_load_npy_dict(path)
    np.save(path, {"a": np.arange(3)})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FlameFileError, match=r"landmark_embedding\.npy: not a readable pickle"):
        safe_load_npy_dict(path)
