"""Allow-list unpickling of FLAME-format files.

A pickle can run any code while it loads, so headstudio never calls ``pickle.load`` or
``np.load(allow_pickle=True)`` on a user's FLAME files. :func:`safe_load_pickle` resolves
only the globals that the licensed FLAME files (and DECA's landmark embedding) need:
numpy arrays, scipy sparse matrices under any of their historical module paths, chumpy
objects (chumpy is not installed: they become stand-ins that are evaluated to numpy
arrays after loading), and torch tensors (rebuilt through ``torch.load(weights_only=True)``
and returned as numpy). Any other global raises :class:`UnsafePickleError` before it is
called. Writing files in the official layout is
:mod:`headstudio.flame.official_writer`'s job.

Layout of the official ``generic_model.pkl`` (a Python 2 pickle, hence ``encoding='latin1'``),
as written by the SMPL/FLAME ``save_model`` (``pickle.dump(d, f, -1)``, i.e. protocol 2):
chumpy's ``Ch`` objects appear as the global ``chumpy.ch Ch`` built with NEWOBJ (protocol 2)
or ``copy_reg._reconstructor(Ch, object, None)`` (protocols 0/1), then BUILD with the
state of ``Ch.__getstate__``: the instance ``__dict__`` without ``_parents`` and ``_cache``,
i.e. ``{'x': ndarray, '_dirty_vars': set, '_itr': None, '_depends_on_deps': {},
'_make_dense': False, '_make_sparse': False}``; the array lives in ``'x'``. Derived chumpy
nodes such as ``chumpy.reordering.Select`` keep their operands instead (``a``, ``idxs``,
``preferred_shape``). ``J_regressor`` is ``scipy.sparse.csc csc_matrix`` with the instance
``__dict__`` as state (``_shape``, ``maxprint``, ``indices``, ``indptr``, ``data``).
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np
from numpy.lib import format as npy_format

__all__ = [
    "FlameFileError",
    "UnsafePickleError",
    "safe_load_npy_dict",
    "safe_load_pickle",
]


class FlameFileError(ValueError):
    """A FLAME-format file is missing, unreadable or malformed (one-line message)."""


class UnsafePickleError(FlameFileError):
    """A pickle asked for something outside headstudio's allow-list."""


# ---------------------------------------------------------------------------------------
# Reading

_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
"""Python 2 module names as they appear in old pickles."""

_SPARSE_NAMES = {
    "csc_matrix": "csc",
    "csr_matrix": "csr",
    "coo_matrix": "coo",
    "csc_array": "csc",
    "csr_array": "csr",
    "coo_array": "coo",
}

_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
_NUMPY_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]


def _safe_bytes(*args: Any) -> bytes:
    """``bytes()`` / ``bytes(text, encoding)`` only: never ``bytes(huge_int)``."""
    if not args:
        return b""
    if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str):
        return bytes(args[0], args[1])
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray, list)):
        return bytes(args[0])
    raise pickle.UnpicklingError(f"unexpected bytes() arguments of types {[type(a).__name__ for a in args]}")


def _safe_bytearray(*args: Any) -> bytearray:
    return bytearray(_safe_bytes(*args))


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 writes bytes at protocol <= 2: latin-1 text only."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin-1 text")
    return text.encode("latin-1")


_BUILTINS: dict[str, Any] = {
    "object": object,
    "set": set,
    "frozenset": frozenset,
    "slice": slice,
    "complex": complex,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "bytes": _safe_bytes,
    "bytearray": _safe_bytearray,
}

_FIXED_GLOBALS: dict[tuple[str, str], Any] = {
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("copyreg", "__newobj__"): copyreg.__newobj__,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _NUMPY_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NUMPY_SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
}


class _StandIn:
    """Records the state of an object whose class is not imported (chumpy, scipy sparse)."""

    source = ""  # "module.name" as written in the pickle
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # INST / OBJ opcodes call cls(*args)
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ChumpyNode(_StandIn):
    """Stand-in for a chumpy object; evaluated to a numpy array after loading."""


class _SparseNode(_StandIn):
    """Stand-in for a scipy sparse matrix; rebuilt with the installed scipy after loading."""

    sparse_format = "csc"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return text or type(exc).__name__


def _torch() -> Any:
    import torch  # imported only when a pickle holds tensors

    return torch


class _AllowListUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only allow-listed globals."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path
        self._stand_ins: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        mod = _MODULE_ALIASES.get(module, module)
        if mod == "builtins" and name in _BUILTINS:
            return _BUILTINS[name]
        if (mod, name) in _FIXED_GLOBALS:
            return _FIXED_GLOBALS[(mod, name)]
        if (mod == "chumpy" or mod.startswith("chumpy.")) and name.isidentifier():
            return self._stand_in(_ChumpyNode, mod, name)
        if (mod == "scipy.sparse" or mod.startswith("scipy.sparse.")) and name in _SPARSE_NAMES:
            return self._stand_in(_SparseNode, mod, name, sparse_format=_SPARSE_NAMES[name])
        if (mod, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (mod, name) == ("torch.storage", "_load_from_bytes"):
            return self._load_torch_bytes
        raise UnsafePickleError(
            f"{self._path}: refused to load global '{module}.{name}' "
            "(not on headstudio's allow-list; a pickle can run code)"
        )

    def _stand_in(self, base: type, module: str, name: str, **attrs: Any) -> type:
        key = (module, name)
        if key not in self._stand_ins:
            self._stand_ins[key] = type(name, (base,), {"source": f"{module}.{name}", **attrs})
        return self._stand_ins[key]

    def _load_torch_bytes(self, payload: Any) -> Any:
        """``torch.storage._load_from_bytes`` through ``torch.load(weights_only=True)``."""
        if isinstance(payload, str):  # a Python 2 str read with encoding='latin1'
            payload = payload.encode("latin-1")
        if not isinstance(payload, (bytes, bytearray)):
            raise pickle.UnpicklingError(f"torch storage payload is {type(payload).__name__}, not bytes")
        torch = _torch()
        try:
            return torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:
            if "weights only" in str(exc).lower():
                raise UnsafePickleError(
                    f"{self._path}: refused an embedded torch payload that needs more than weights_only "
                    f"loading ({_one_line(exc)[:200]})"
                ) from None
            raise

    def _rebuild_tensor(
        self,
        storage: Any,
        offset: int,
        size: Any,
        stride: Any,
        requires_grad: bool = False,
        hooks: Any = None,
        metadata: Any = None,
    ) -> Any:
        """``torch._utils._rebuild_tensor_v2`` for plain storages, without hooks or metadata."""
        torch = _torch()
        if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
            raise pickle.UnpicklingError(f"tensor storage is {type(storage).__name__}, not a torch storage")
        if hooks:
            raise UnsafePickleError(f"{self._path}: refused a tensor with backward hooks")
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, collections.OrderedDict())


@contextlib.contextmanager
def _quiet_numpy_warnings() -> Iterator[None]:
    """Python 2 pickles spell dtype flags as ints, which newer numpy warns about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        visible = getattr(getattr(np, "exceptions", np), "VisibleDeprecationWarning", None)
        if visible is not None:
            warnings.simplefilter("ignore", visible)
        yield


def _unpickle(stream: BinaryIO, path: Path) -> Any:
    try:
        with _quiet_numpy_warnings():
            return _AllowListUnpickler(stream, path).load()
    except FlameFileError:
        raise
    except Exception as exc:  # anything else means the bytes are not a readable pickle
        raise FlameFileError(f"{path}: not a readable pickle (truncated or corrupt): {_one_line(exc)}") from exc


class _Plainer:
    """Replaces stand-ins and torch tensors by numpy / scipy objects, recursively."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._done: dict[int, Any] = {}
        self._active: set[int] = set()
        self._keep: list[Any] = []  # keeps converted originals alive so ids stay unique

    def __call__(self, obj: Any) -> Any:
        try:
            return self._convert(obj)
        except FlameFileError:
            raise
        except RecursionError:
            raise FlameFileError(f"{self._path}: nesting too deep to read") from None
        except Exception as exc:
            raise FlameFileError(f"{self._path}: malformed content ({_one_line(exc)})") from exc

    def _convert(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, (str, bytes, int, float, complex, bool)):
            return obj
        key = id(obj)
        if key in self._done:
            return self._done[key]
        self._keep.append(obj)
        if isinstance(obj, _ChumpyNode):
            out: Any = self._chumpy(obj)
        elif isinstance(obj, _SparseNode):
            out = self._sparse(obj)
        elif isinstance(obj, _StandIn):  # pragma: no cover - only the two kinds exist
            raise FlameFileError(f"{self._path}: unexpected object {obj.source}")
        elif _is_tensor(obj):
            out = obj.detach().cpu().numpy()
        elif isinstance(obj, np.ndarray):
            out = obj
            self._done[key] = out
            if obj.dtype == object:
                for index in np.ndindex(obj.shape):
                    obj[index] = self._convert(obj[index])
        elif isinstance(obj, dict):
            out = obj
            self._done[key] = out
            for k in list(obj.keys()):
                obj[k] = self._convert(obj[k])
        elif isinstance(obj, list):
            out = obj
            self._done[key] = out
            for i, item in enumerate(obj):
                obj[i] = self._convert(item)
        elif isinstance(obj, tuple):
            out = tuple(self._convert(item) for item in obj)
        else:
            out = obj
        self._done[key] = out
        return out

    def _array(self, value: Any, what: str) -> np.ndarray:
        value = self._convert(value)
        if hasattr(value, "toarray"):
            value = value.toarray()
        arr = np.asarray(value)
        if arr.dtype == object:
            raise FlameFileError(f"{self._path}: {what} is not a numeric array")
        return arr

    def _chumpy(self, node: _ChumpyNode) -> np.ndarray:
        key = id(node)
        if key in self._active:
            raise FlameFileError(f"{self._path}: chumpy object {node.source} refers to itself")
        self._active.add(key)
        try:
            state = node.state
            if not isinstance(state, Mapping):
                raise FlameFileError(f"{self._path}: chumpy object {node.source} has no state dict")
            kind = node.source.rsplit(".", 1)[-1]
            if kind == "Select" and "a" in state and "idxs" in state:
                source = self._array(state["a"], f"operand of {node.source}")
                idxs = self._array(state["idxs"], f"idxs of {node.source}").astype(np.int64)
                out = source.reshape(-1)[idxs.reshape(-1)]
                if state.get("preferred_shape") is not None:
                    out = out.reshape(tuple(int(s) for s in state["preferred_shape"]))
            elif kind == "Reshape" and "a" in state and "newshape" in state:
                newshape = state["newshape"]
                newshape = (int(newshape),) if np.isscalar(newshape) else tuple(int(s) for s in newshape)
                out = self._array(state["a"], f"operand of {node.source}").reshape(newshape)
            elif kind == "transpose" and "a" in state:
                axes = state.get("axes")
                out = np.transpose(self._array(state["a"], f"operand of {node.source}"), axes)
            elif "x" in state:
                out = self._array(state["x"], f"value of {node.source}")
            else:
                keys = ", ".join(sorted(str(k) for k in state.keys())[:8])
                raise FlameFileError(f"{self._path}: cannot evaluate chumpy object {node.source} (state keys: {keys})")
            # chumpy's `.r` is always a C-ordered float64 array.
            return np.ascontiguousarray(out, dtype=np.float64)
        finally:
            self._active.discard(key)

    def _sparse(self, node: _SparseNode) -> Any:
        import scipy.sparse as sparse

        state = node.state
        if not isinstance(state, Mapping):
            raise FlameFileError(f"{self._path}: sparse matrix {node.source} has no state dict")
        shape = state.get("_shape", state.get("shape"))
        if shape is None or len(shape) != 2:
            raise FlameFileError(f"{self._path}: sparse matrix {node.source} has no 2-D shape")
        shape = (int(shape[0]), int(shape[1]))
        data = self._array(state.get("data"), f"data of {node.source}")
        if node.sparse_format == "coo":
            if "coords" in state:
                row, col = state["coords"]
            else:
                row, col = state.get("row"), state.get("col")
            row = self._array(row, f"rows of {node.source}")
            col = self._array(col, f"columns of {node.source}")
            return sparse.coo_matrix((data, (row, col)), shape=shape)
        indices = self._array(state.get("indices"), f"indices of {node.source}")
        indptr = self._array(state.get("indptr"), f"indptr of {node.source}")
        cls = sparse.csc_matrix if node.sparse_format == "csc" else sparse.csr_matrix
        matrix = cls((data, indices, indptr), shape=shape)
        matrix.check_format(full_check=True)
        return matrix


def _is_tensor(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    if not module.startswith("torch"):
        return False
    return isinstance(obj, _torch().Tensor)


def _open_file(path: Path, what: str) -> BinaryIO:
    if not path.exists():
        raise FlameFileError(f"{path}: {what} not found")
    if not path.is_file():
        raise FlameFileError(f"{path}: {what} is not a file")
    try:
        return open(path, "rb")
    except OSError as exc:
        raise FlameFileError(f"{path}: cannot open {what} ({_one_line(exc)})") from exc


def safe_load_pickle(path: os.PathLike | str) -> Any:
    """Load a (possibly Python 2) pickle through headstudio's allow-list.

    chumpy objects come back as float64 numpy arrays, scipy sparse matrices as
    ``scipy.sparse.csc_matrix`` / ``csr_matrix`` / ``coo_matrix`` of the installed scipy,
    torch tensors as numpy arrays. Raises :class:`UnsafePickleError` for any global not on
    the allow-list (nothing is called) and :class:`FlameFileError` for missing, truncated
    or corrupt files.
    """
    path = Path(path)
    with _open_file(path, "pickle file") as f:
        raw = _unpickle(f, path)
    return _Plainer(path)(raw)


def _read_npy_header(f: BinaryIO, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            return npy_format.read_array_header_1_0(f)
        if version == (2, 0):
            return npy_format.read_array_header_2_0(f)
        reader = getattr(npy_format, "_read_array_header", None)
        if version == (3, 0) and reader is not None:
            return reader(f, version)
    except Exception as exc:
        raise FlameFileError(f"{path}: not a readable .npy file ({_one_line(exc)})") from exc
    raise FlameFileError(f"{path}: not a readable .npy file (unsupported format version {version[0]}.{version[1]})")


def safe_load_npy_dict(path: os.PathLike | str) -> Any:
    """Load an ``np.save``'d file without ``allow_pickle=True``.

    An object payload (``np.save`` of a dict, as DECA's ``landmark_embedding.npy``) is
    unpickled through the allow-list; a 0-d object array is unwrapped to its item (the
    dict), torch tensors inside become numpy arrays. A numeric ``.npy`` is returned as the
    array itself.
    """
    path = Path(path)
    with _open_file(path, ".npy file") as f:
        shape, _fortran, dtype = _read_npy_header(f, path)
        if dtype.hasobject:
            raw = _unpickle(f, path)
        else:
            raw = None
    if raw is None:
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:
            raise FlameFileError(f"{path}: not a readable .npy file ({_one_line(exc)})") from exc
    if not isinstance(raw, np.ndarray) or raw.dtype != object:
        raise FlameFileError(f"{path}: .npy object payload is {type(raw).__name__}, not an object array")
    if raw.shape != tuple(shape):
        raise FlameFileError(f"{path}: .npy payload has shape {raw.shape}, header says {tuple(shape)}")
    if raw.shape == ():
        raw = raw.item()
    return _Plainer(path)(raw)

