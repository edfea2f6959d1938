"""Backend selection for the ``atedm`` ops.

Every op has a pure-PyTorch reference, which defines it. Some also have kernels:

=====================  ===========  ==========================================================
op                     GPU backend  CPU backend (``"cpu"``): C++ kernel / PyTorch fallback
=====================  ===========  ==========================================================
attention_with_map     ``"triton"``  register-tiled, fused softmax and head sum / row-blocked
attention              ``"triton"``
gwpr                   ``"cuda"``    row-streaming power iteration, float64 sums / GEMV
select_tokens          ``"cuda"``
similarity_sources     ``"cuda"``    gathered running argmax / block argmax
gather_tokens          ``"cuda"``
recover_tokens         ``"cuda"``
gwpr_cross, sito_select  reference only
=====================  ===========  ==========================================================

``backend="auto"`` (the default, or whatever ``ATEDM_BACKEND`` names) picks the op's GPU backend for CUDA
tensors when it is available (the reference otherwise, with one warning), and for tensors on any other device
(CPU, MPS) the op's ``"cpu"`` kernel where it has one, else the reference. A ``"cpu"`` kernel is the C++ of the
module ``atedm_kernels._cpu`` (``csrc/cpu/``, x86-64 with AVX2, FMA and F16C) for host tensors where it is built and
the CPU runs it, and plain PyTorch written for a CPU's caches otherwise (MPS, other CPUs, no build):
:mod:`atedm_kernels.kernels.cpu_attention`, :mod:`atedm_kernels.kernels.cpu_pruning`.
Asking for a backend by name that cannot run raises a ``RuntimeError`` that says why, so a test that forces a
backend never silently measures another one. Under ``TRITON_INTERPRET=1`` the ``"triton"`` backend also runs on CPU
tensors.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import warnings

import torch

BACKENDS = ("auto", "reference", "triton", "cuda", "cpu")
ENV_VAR = "ATEDM_BACKEND"

# The one table of kernels: for every op, each kernel family that has a kernel for it and the function that runs it
# ("module:function" in atedm_kernels.kernels, imported on first use), called with the op's arguments after its
# checks, as the op's reference is. Dispatch (``kernel``), ``OP_KERNELS``, the public functions' "Backends:" lines
# and the README's op table all come from here.
KERNELS: dict[str, dict[str, str]] = {
    "attention_with_map": {"triton": "triton_attention:attention_with_map_triton",
                           "cpu": "cpu_attention:attention_with_map_cpu"},
    "attention": {"triton": "triton_attention:attention_triton"},
    "gwpr": {"cuda": "cuda:gwpr_cuda", "cpu": "cpu_pruning:gwpr_cpu"},
    "select_tokens": {"cuda": "cuda:select_tokens_cuda"},
    "similarity_sources": {"cuda": "cuda:similarity_sources_cuda", "cpu": "cpu_pruning:similarity_sources_cpu"},
    "gather_tokens": {"cuda": "cuda:gather_tokens_cuda"},
    "recover_tokens": {"cuda": "cuda:recover_tokens_cuda"},
    "gwpr_cross": {},
    "sito_select": {},
}
# The kernel backends each op has, besides "reference".
OP_KERNELS: dict[str, tuple[str, ...]] = {op: tuple(families) for op, families in KERNELS.items()}


def kernel(op: str, family: str):
    """The function of ``op``'s ``family`` kernel (``KERNELS``), its module imported on first use."""
    module, function = KERNELS[op][family].split(":")
    return getattr(importlib.import_module(f"atedm_kernels.kernels.{module}"), function)


def backends_line(op: str) -> str:
    """``Backends: "auto", "reference", ...`` for ``op``'s docstring, from ``KERNELS``."""
    names = ("auto", "reference", *OP_KERNELS[op])
    return "Backends: " + ", ".join(f'"{name}"' for name in names) + "."


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here (no GPU, extension not built, no Triton)."""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton backend cannot run on ``device`` (``None`` when it can)."""
    err = _import_error("triton")
    if err is not None:
        return f"triton cannot be imported ({err})"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpret():
        return None
    return (
        f"the tensors are on {device.type!r}: Triton kernels need CUDA tensors "
        "(or CPU tensors with TRITON_INTERPRET=1)"
    )


def cuda_unavailable_reason(device: torch.device) -> str | None:
    """Why the CUDA extension backend cannot run on ``device`` (``None`` when it can)."""
    err = _import_error("atedm_kernels._C")
    if err is not None:
        return (
            "the CUDA extension atedm_kernels._C is not built "
            f"({err}); reinstall with nvcc on PATH or ATEDM_BUILD_CUDA=1"
        )
    if device.type != "cuda":
        return f"the tensors are on {device.type!r}: the CUDA extension needs CUDA tensors"
    return _arch_mismatch(device)


def _arch_mismatch(device: torch.device) -> str | None:
    """Why the extension's compiled architectures cannot run on ``device`` (``None`` when they can)."""
    from . import _C

    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    archs = str(_C.info()["cuda_archs"])
    major, minor = torch.cuda.get_device_capability(device)
    if not archs_run_on(archs, 10 * major + minor):
        return f"the extension is built for {archs} but {device} is sm_{major}{minor}; rebuild with ATEDM_CUDA_ARCHS"
    return None


def archs_run_on(archs: str, capability: int) -> bool:
    """Whether a build for ``archs`` (CMake's CUDA_ARCHITECTURES entries, ``,`` or ``;`` separated: ``80`` is SASS
    and PTX, ``80-real`` SASS, ``80-virtual`` PTX, ``90a`` arch-specific) has code for compute capability
    ``capability`` (``10 * major + minor``): SASS of the same major version and a minor at most the device's, or
    PTX of a capability at most the device's, which the driver compiles at load time. Unparsed entries are ignored;
    an empty list is taken as runnable (nothing known)."""
    entries = [re.fullmatch(r"(\d+)([a-z]?)(-real|-virtual)?", a.strip()) for a in re.split(r"[,;]", archs)]
    entries = [e for e in entries if e]
    if not entries:
        return True
    for entry in entries:
        number, specific, kind = int(entry[1]), entry[2], entry[3]
        if specific:  # sm_90a and the like run on exactly that capability
            runs = number == capability
        else:
            sass = kind != "-virtual" and number // 10 == capability // 10 and number <= capability
            ptx = kind != "-real" and number <= capability
            runs = sass or ptx
        if runs:
            return True
    return False


def cpu_unavailable_reason(device: torch.device) -> str | None:
    """Why the CPU kernels cannot run on ``device`` (``None`` when they can): they are for non-CUDA tensors."""
    if device.type == "cuda":
        return "the tensors are on 'cuda': the cpu kernels are for CPU (and other non-CUDA) tensors"
    return None


_UNAVAILABLE = {"triton": triton_unavailable_reason, "cuda": cuda_unavailable_reason, "cpu": cpu_unavailable_reason}
_GPU_KERNELS = ("triton", "cuda")


def default_backend() -> str:
    name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"environment variable {ENV_VAR}={name!r} is not a backend; expected one of {BACKENDS}")
    return name


@functools.lru_cache(maxsize=None)
def _warn_fallback_once(op: str, reason: str) -> None:
    warnings.warn(
        f"atedm.{op}: running the PyTorch reference on a CUDA tensor because {reason}",
        RuntimeWarning,
        stacklevel=4,
    )


def check_backend(op: str, backend: object) -> str:
    """Validate a backend name for ``op`` without asking whether it can run here; returns it normalised."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {BACKENDS}; got {type(backend).__name__}")
    name = backend.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if name not in ("auto", "reference") and name not in OP_KERNELS[op]:
        raise ValueError(
            f"backend={name!r} has no kernel for atedm.{op}; its backends are {('auto', 'reference') + OP_KERNELS[op]}"
        )
    return name


def preference_for(op: str, backend: str) -> str:
    """A model-wide preference ("triton" or "cuda") applied to one op: ops without a kernel of that family
    choose as "auto" does, so ``ATEDM_BACKEND=cuda`` or ``AtEdmConfig(backend="cuda")`` still forces every CUDA
    kernel while the attention takes Triton."""
    return backend if backend in ("auto", "reference") or backend in OP_KERNELS[op] else "auto"


def family_for(op: str, preference: str, device: torch.device) -> str:
    """The kernel family that runs ``op`` on ``device`` under a model-wide ``preference`` (:func:`preference_for`
    then :func:`resolve`): what ``atedm bench`` records per op."""
    return resolve(op, preference_for(op, preference), device)


def resolve(op: str, backend: str, device: torch.device) -> str:
    """The backend that runs ``op`` for tensors on ``device``: "reference", "triton", "cuda" or "cpu".

    ``backend`` is the caller's choice ("auto" defers to ``ATEDM_BACKEND``, then to the device).
    """
    name = check_backend(op, backend)
    from_env = name == "auto"
    if from_env:
        name = default_backend()
    if name == "reference":
        return name
    kernels = OP_KERNELS[op]
    if from_env:
        name = preference_for(op, name)
    if name == "auto":
        if device.type != "cuda":
            return "cpu" if "cpu" in kernels else "reference"
        for kernel in (k for k in kernels if k in _GPU_KERNELS):
            reason = _UNAVAILABLE[kernel](device)
            if reason is None:
                return kernel
            _warn_fallback_once(op, reason)
        return "reference"
    reason = _UNAVAILABLE[name](device)
    if reason is not None:
        raise BackendUnavailableError(f"atedm.{op}: backend {name!r} is unavailable: {reason}")
    return name
