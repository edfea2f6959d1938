"""The tools floor: command-line tools, benchmarks' drivers and the small trained model that measures quality.

Tools import the diffusers integration (:mod:`atedm_kernels.sdxl`, :mod:`atedm_kernels.sito`) and the core; nothing
below imports a tool.
"""
