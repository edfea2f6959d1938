"""GPU kernels behind the ops: ``triton_attention`` (fused attention + head-averaged map) and ``cuda`` (the
launch wrappers of the CUDA extension ``atedm_kernels._C``: G-WPR, top-k select, similarity sources, gather and
recovery scatter). Both are imported lazily by :mod:`atedm_kernels.ops` only when their backend is chosen."""
