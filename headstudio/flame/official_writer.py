"""Writing FLAME-format pickles laid out like the official ``generic_model.pkl``.

:func:`dump_official_style` writes a protocol 2 pickle the way the SMPL/FLAME
``save_model`` did under Python 2: chumpy ``Ch`` objects (chumpy need not be installed),
a Python 2 era ``scipy.sparse.csc csc_matrix`` for ``J_regressor``, byte strings and ASCII
text as Python 2 ``str``. It is used to produce official-style files (the procedural head
model, test fixtures) that exercise the same loading path as a licensed FLAME file; the
layout itself is described in :mod:`headstudio.flame.safe_pickle`, whose allow-list
reader loads these files.
"""

from __future__ import annotations

import copyreg
import os
import pickle
import struct
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping, Optional

import numpy as np

from headstudio.flame.safe_pickle import _NUMPY_RECONSTRUCT, _NUMPY_SCALAR

__all__ = ["dump_official_style"]


class _ChumpyChOut:
    """Written as chumpy's ``Ch`` (global ``chumpy.ch Ch``, NEWOBJ, state of ``__getstate__``)."""

    def __init__(self, x: np.ndarray) -> None:
        self.state = {
            "_dirty_vars": {"x"},
            "_itr": None,
            "_make_dense": False,
            "_make_sparse": False,
            "_depends_on_deps": {},
            "x": x,
        }

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return (copyreg.__newobj__, (type(self),), self.state)


class _CscOut:
    """Written as Python 2 era ``scipy.sparse.csc csc_matrix`` with its ``__dict__`` as state."""

    def __init__(self, matrix: Any) -> None:
        self.state = {
            "_shape": tuple(int(s) for s in matrix.shape),
            "maxprint": 50,
            "indices": np.asarray(matrix.indices, dtype=np.int32),
            "indptr": np.asarray(matrix.indptr, dtype=np.int32),
            "data": np.asarray(matrix.data),
        }

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return (copyreg.__newobj__, (type(self),), self.state)


_WRITE_SPELLING: dict[Any, tuple[str, str]] = {
    _ChumpyChOut: ("chumpy.ch", "Ch"),
    _CscOut: ("scipy.sparse.csc", "csc_matrix"),
    _NUMPY_RECONSTRUCT: ("numpy.core.multiarray", "_reconstruct"),
    _NUMPY_SCALAR: ("numpy.core.multiarray", "scalar"),
    np.ndarray: ("numpy", "ndarray"),
    np.dtype: ("numpy", "dtype"),
}


class _Py2Pickler(pickle._Pickler):  # the Python pickler: its opcode writers can be replaced
    """Protocol 2 as Python 2 wrote it: byte strings and ASCII text as ``str`` (BINSTRING)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, protocol=2, fix_imports=True)

    def save_global(self, obj: Any, name: Optional[str] = None) -> None:
        try:
            spelled = _WRITE_SPELLING.get(obj)
        except TypeError:
            spelled = None
        if spelled is None:
            super().save_global(obj, name)
            return
        self.write(pickle.GLOBAL + f"{spelled[0]}\n{spelled[1]}\n".encode("ascii"))
        self.memoize(obj)

    def _write_py2_str(self, data: bytes) -> None:
        n = len(data)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + data)
        elif n <= 0x7FFFFFFF:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + data)
        else:
            raise ValueError(f"a {n}-byte string does not fit in a protocol 2 pickle")

    def save_py2_bytes(self, obj: bytes) -> None:
        self._write_py2_str(obj)
        self.memoize(obj)

    def save_py2_text(self, obj: str) -> None:
        if not obj.isascii():
            pickle._Pickler.save_str(self, obj)
            return
        self._write_py2_str(obj.encode("ascii"))
        self.memoize(obj)

    dispatch[bytes] = save_py2_bytes
    dispatch[str] = save_py2_text


def dump_official_style(
    data: Mapping[str, Any],
    path: os.PathLike | str,
    chumpy_keys: Iterable[str] = ("shapedirs",),
    sparse_keys: Iterable[str] = ("J_regressor",),
) -> None:
    """Write ``data`` as a protocol 2 pickle laid out like the official FLAME file.

    Values under ``chumpy_keys`` become chumpy ``Ch`` objects (float64, as chumpy stores
    them), values under ``sparse_keys`` (dense or sparse) become a ``scipy.sparse.csc
    csc_matrix``; other values are pickled as they are. Keys named but absent are skipped.
    Byte strings and ASCII text are written as Python 2 ``str``, so the file loads with
    ``encoding='latin1'`` like the official one (bytes values then come back as ``str``).
    chumpy need not be installed and nothing is registered in ``sys.modules``. The file is
    written to a temporary file in the same folder and moved into place.
    """
    import scipy.sparse as sparse

    path = Path(path)
    chumpy_keys = set(chumpy_keys)
    sparse_keys = set(sparse_keys)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in sparse_keys:
            matrix = sparse.csc_matrix(value)
            matrix.sort_indices()
            out[key] = _CscOut(matrix)
        elif key in chumpy_keys:
            if hasattr(value, "toarray"):
                value = value.toarray()
            out[key] = _ChumpyChOut(np.ascontiguousarray(np.asarray(value, dtype=np.float64)))
        else:
            out[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _Py2Pickler(f).dump(out)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
