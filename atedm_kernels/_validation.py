"""Argument checks shared by the ops, their fake implementations and the SD-XL layer.

Every failure is a ``TypeError`` (wrong kind of thing, wrong dtype) or a ``ValueError`` (wrong rank, shape, range,
device) whose message starts with the argument's name and says what was expected. Checks only read metadata, so
they run unchanged on fake tensors under ``torch.compile`` and never synchronise with the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAP_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPE = torch.int64


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(
    name: str,
    value: object,
    ndim: int,
    dtypes: Sequence[torch.dtype] | None = None,
    layout: str = "",
) -> torch.Tensor:
    """``value`` must be a tensor of rank ``ndim`` (and one of ``dtypes`` when given)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        shape = f" {layout}" if layout else ""
        raise ValueError(f"{name} must have {ndim} dimensions{shape}, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_dtype_names(dtypes)}), got {value.dtype}")
    return value


def check_index(name: str, value: object, batch: int, layout: str) -> torch.Tensor:
    """``value`` must be an int64 index tensor of shape ``[batch, *]``."""
    check_tensor(name, value, 2, layout=layout)
    if value.dtype != INDEX_DTYPE:
        raise TypeError(f"{name} must be an int64 index tensor, got {value.dtype}")
    if value.shape[0] != batch:
        raise ValueError(f"{name} must have batch size {batch} (dim 0), got shape {tuple(value.shape)}")
    return value


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, tensor in items[1:]:
        if tensor.device != first.device:
            raise ValueError(f"{name} is on {tensor.device} but {first_name} is on {first.device}; they must match")
    return first.device


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` must be an int (not bool) with ``low <= value`` (``<= high`` when given).

    A ``torch.SymInt`` counts as an int: under ``torch.compile(dynamic=True)`` sizes and the integers derived from
    them (``keep``, even ``num_iters``) reach the ops and their fakes symbolic; the range check then guards on it.
    """
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_float(name: str, value: object, low: float, high: float, *, open_low: bool = False,
                open_high: bool = False) -> float:
    """``value`` must be a real number within ``[low, high]`` (``(low`` with ``open_low``, ``high)`` with
    ``open_high``; ``high=math.inf`` for no upper bound, which still refuses infinity and NaN); symbolic numbers
    (``torch.SymInt``, ``torch.SymFloat``) count, as in ``check_int``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.SymInt, torch.SymFloat)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    symbolic = isinstance(value, (torch.SymInt, torch.SymFloat))
    if not symbolic:
        value = float(value)
    # Each comparison is a guard under torch.compile, re-checked on every call and costly to trace: the bounds get
    # one each; NaN and infinity are asked with math.isnan/isfinite, and not at all of a symbolic number (it comes
    # from sizes, so it is finite): `value != value` and `value >= inf` made a dynamic-shape U-Net compile 5x slower.
    below = value <= low if open_low else value < low
    if high == math.inf:
        above = not symbolic and not math.isfinite(value)
    else:
        above = value >= high if open_high else value > high
    if below or above or (not symbolic and math.isnan(value)):
        left, right = "(" if open_low else "[", ")" if open_high or high == math.inf else "]"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` must be a bool (not an int standing in for one)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` must be one of the strings ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {tuple(choices)}, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
