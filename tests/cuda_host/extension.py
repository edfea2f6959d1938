"""The CPU test build's launchers, called like ``atedm_kernels._C``'s: the same names, positional arguments (host
addresses where the real module takes device pointers; the stream is ignored) and exceptions (``ValueError`` for a
bad argument, ``RuntimeError`` for a CUDA error)."""

from __future__ import annotations

import ctypes
from pathlib import Path

_PTR, _I64, _INT, _F64 = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_SIGNATURES = {
    "gwpr_workspace_floats": [ctypes.POINTER(_I64), _I64, _I64, _INT],
    "gwpr": [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _F64, _INT, _PTR],
    "select_tokens": [_PTR, _PTR, _PTR, _I64, _I64, _I64, _INT, _PTR],
    "similarity_sources": [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _INT, _PTR],
    "gather_tokens": [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _INT, _PTR],
    "recover_tokens": [_PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _INT, _PTR],
}


class HostExtension:
    """``atedm_kernels._C``'s launchers from the shared library ``tests/cuda_host/build.py`` made."""

    def __init__(self, library: Path) -> None:
        self.library = library
        self._lib = ctypes.CDLL(str(library))
        for name, argtypes in _SIGNATURES.items():
            function = getattr(self._lib, f"cuda_host_{name}")
            function.argtypes = [*argtypes, ctypes.c_char_p, ctypes.c_size_t]
            function.restype = ctypes.c_int

    def _call(self, name: str, *args) -> None:
        message = ctypes.create_string_buffer(1024)
        status = getattr(self._lib, f"cuda_host_{name}")(*args, message, len(message))
        if status == 1:
            raise ValueError(message.value.decode())
        if status != 0:
            raise RuntimeError(message.value.decode())

    def gwpr_workspace_floats(self, batch: int, n: int, dtype: int) -> int:
        floats = _I64()
        self._call("gwpr_workspace_floats", ctypes.byref(floats), batch, n, dtype)
        return floats.value

    def gwpr(self, *args) -> None:
        self._call("gwpr", *args)

    def select_tokens(self, *args) -> None:
        self._call("select_tokens", *args)

    def similarity_sources(self, *args) -> None:
        self._call("similarity_sources", *args)

    def gather_tokens(self, *args) -> None:
        self._call("gather_tokens", *args)

    def recover_tokens(self, *args) -> None:
        self._call("recover_tokens", *args)
