"""Build script: installs the Python package and, when CUDA can be built, the extension ``atedm_kernels._C``.

``ATEDM_BUILD_CUDA``: ``auto`` (default; build when ``nvcc`` is found, otherwise install without the extension),
``1`` (build or fail loudly), ``0`` (never build). ``ATEDM_CUDA_ARCHS`` overrides the CUDA architectures
(CMake list syntax); the default list lives in CMakeLists.txt alone, so a direct ``cmake`` build gets the same.
CMake runs with the Ninja generator.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "atedm_kernels" / "__init__.py").read_text()).group(1)


def _build_mode() -> str:
    mode = os.environ.get("ATEDM_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"ATEDM_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    return mode


def _find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self) -> None:
        mode = _build_mode()
        nvcc = _find_nvcc()
        if mode == "0":
            print("atedm_kernels: ATEDM_BUILD_CUDA=0, installing without the CUDA extension")
            return
        if nvcc is None:
            if mode == "1":
                raise SystemExit("atedm_kernels: ATEDM_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
            print("atedm_kernels: nvcc not found, installing without the CUDA extension (reference/Triton paths only)")
            return
        try:
            for ext in self.extensions:
                self._build_cmake(ext, nvcc)
        except (OSError, subprocess.CalledProcessError) as exc:
            if mode == "1":
                raise SystemExit(f"atedm_kernels: building the CUDA extension failed: {exc}") from exc
            print(f"atedm_kernels: WARNING: building the CUDA extension failed ({exc}); installing without it")

    def _build_cmake(self, ext: CMakeExtension, nvcc: str) -> None:
        import pybind11

        ext_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("ATEDM_CUDA_ARCHS")
        configure = [
            "cmake",
            str(ROOT),
            "-G",
            "Ninja",
            f"-DCMAKE_CUDA_COMPILER={nvcc}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DATEDM_VERSION={VERSION}",
        ]
        if archs:
            configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel"], cwd=build_dir, check=True)


setup(
    version=VERSION,
    ext_modules=[CMakeExtension("atedm_kernels._C")],
    cmdclass={"build_ext": CMakeBuild},
)
