"""``atedm_kernels.kernels.cuda``'s wrappers for the CPU test build: the same functions, arguments and results, on
CPU tensors (their host addresses go to the launchers, the stream is 0). Like the real wrappers they make inputs
contiguous, allocate outputs with ``torch.empty`` or fill the ``out=`` tensors, and leave every check of shapes and
values to the launchers and the ops."""

from __future__ import annotations

import torch

from atedm_kernels.kernels.dtype_codes import DTYPE_CODES

from .extension import HostExtension


def _output(name: str, out, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype)
    if tuple(out.shape) != shape or out.dtype != dtype or out.device.type != "cpu" or not out.is_contiguous():
        raise ValueError(f"{name} must be a contiguous CPU {dtype} tensor of shape {shape}")
    return out


class HostKernels:
    """``gwpr_cuda``, ``select_tokens_cuda``, ... running the kernels of ``csrc/`` through ``HostExtension``."""

    def __init__(self, extension: HostExtension) -> None:
        self.ext = extension

    def gwpr_cuda(self, amap, num_iters, damping, *, out=None):
        amap = amap.contiguous()
        batch, n, _ = amap.shape
        code = DTYPE_CODES[amap.dtype]
        scores = _output("out", out, (batch, n), torch.float32)
        floats = self.ext.gwpr_workspace_floats(batch, n, code) if num_iters > 0 else 0
        workspace = torch.empty(floats, dtype=torch.float32)
        self.ext.gwpr(amap.data_ptr(), scores.data_ptr(), workspace.data_ptr(), floats, batch, n, num_iters,
                      float(damping), code, 0)
        return scores

    def select_tokens_cuda(self, scores, keep, *, out=None):
        scores = scores.contiguous()
        batch, n = scores.shape
        keep_out, prune_out = out if out is not None else (None, None)
        keep_idx = _output("out[0] (keep_idx)", keep_out, (batch, keep), torch.int64)
        prune_idx = _output("out[1] (prune_idx)", prune_out, (batch, n - keep), torch.int64)
        self.ext.select_tokens(scores.data_ptr(), keep_idx.data_ptr(), prune_idx.data_ptr(), batch, n, keep,
                               DTYPE_CODES[scores.dtype], 0)
        return keep_idx, prune_idx

    def similarity_sources_cuda(self, amap, keep_idx, prune_idx, *, out=None):
        amap, keep_idx, prune_idx = amap.contiguous(), keep_idx.contiguous(), prune_idx.contiguous()
        batch, n, _ = amap.shape
        src = _output("out", out, (batch, prune_idx.shape[1]), torch.int64)
        self.ext.similarity_sources(amap.data_ptr(), keep_idx.data_ptr(), prune_idx.data_ptr(), src.data_ptr(),
                                    batch, n, keep_idx.shape[1], DTYPE_CODES[amap.dtype], 0)
        return src

    def gather_tokens_cuda(self, x, idx, *, out=None):
        x, idx = x.contiguous(), idx.contiguous()
        batch, n, channels = x.shape
        k = idx.shape[1]
        result = _output("out", out, (batch, k, channels), x.dtype)
        self.ext.gather_tokens(x.data_ptr(), idx.data_ptr(), result.data_ptr(), batch, n, k, channels,
                               DTYPE_CODES[x.dtype], 0)
        return result

    def recover_tokens_cuda(self, x_kept, keep_idx, prune_idx, src, *, out=None):
        x_kept, keep_idx = x_kept.contiguous(), keep_idx.contiguous()
        prune_idx, src = prune_idx.contiguous(), src.contiguous()
        batch, keep, channels = x_kept.shape
        n = keep + prune_idx.shape[1]
        result = _output("out", out, (batch, n, channels), x_kept.dtype)
        self.ext.recover_tokens(x_kept.data_ptr(), keep_idx.data_ptr(), prune_idx.data_ptr(), src.data_ptr(),
                                result.data_ptr(), batch, n, keep, channels, DTYPE_CODES[x_kept.dtype], 0)
        return result
