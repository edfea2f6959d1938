"""Build script: installs the Python package and the pybind11 modules CMakeLists.txt describes.

``atedm_kernels._C`` (CUDA kernels), ``ATEDM_BUILD_CUDA``: ``auto`` (default; build when ``nvcc`` is found, otherwise
install without it), ``1`` (build or fail loudly), ``0`` (never build). ``ATEDM_CUDA_ARCHS`` overrides the CUDA
architectures (CMake list syntax); the default list lives in CMakeLists.txt alone, so a direct ``cmake`` build gets
the same.

``atedm_kernels._cpu`` (x86-64 CPU kernels), ``ATEDM_BUILD_CPU``: ``auto`` (default; build with the C++ compiler,
install without it if that fails), ``1`` (build or fail loudly), ``0`` (never build). Without it the ``"cpu"``
backend runs its pure-PyTorch path.

Each module has its own CMake build (Ninja generator), so a failed CUDA build never costs the CPU module.
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


def _build_mode(variable: str) -> str:
    mode = os.environ.get(variable, "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"{variable} must be auto, 0 or 1, got {mode!r}")
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
        for ext in self.extensions:
            if ext.name.endswith("._C"):
                self._build_cuda(ext)
            else:
                self._build_cpu(ext)

    def _build_cuda(self, ext: CMakeExtension) -> None:
        mode = _build_mode("ATEDM_BUILD_CUDA")
        nvcc = _find_nvcc()
        if mode == "0":
            print("atedm_kernels: ATEDM_BUILD_CUDA=0, installing without the CUDA extension")
            return
        if nvcc is None:
            if mode == "1":
                raise SystemExit("atedm_kernels: ATEDM_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
            print("atedm_kernels: nvcc not found, installing without the CUDA extension (reference/Triton paths only)")
            return
        options = [f"-DCMAKE_CUDA_COMPILER={nvcc}", "-DATEDM_CUDA=ON", "-DATEDM_CPU=OFF"]
        archs = os.environ.get("ATEDM_CUDA_ARCHS")
        if archs:
            options.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
        self._cmake(ext, "cuda", options, mode, "the CUDA extension")

    def _build_cpu(self, ext: CMakeExtension) -> None:
        mode = _build_mode("ATEDM_BUILD_CPU")
        if mode == "0":
            print("atedm_kernels: ATEDM_BUILD_CPU=0, installing without the CPU kernels module")
            return
        self._cmake(ext, "cpu", ["-DATEDM_CUDA=OFF", "-DATEDM_CPU=ON"], mode, "the CPU kernels module")

    def _cmake(self, ext: CMakeExtension, name: str, options: list[str], mode: str, what: str) -> None:
        import pybind11

        ext_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / f"cmake-{name}"
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake",
            str(ROOT),
            "-G",
            "Ninja",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DATEDM_VERSION={VERSION}",
            *options,
        ]
        try:
            subprocess.run(configure, cwd=build_dir, check=True)
            subprocess.run(["cmake", "--build", ".", "--parallel"], cwd=build_dir, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            if mode == "1":
                raise SystemExit(f"atedm_kernels: building {what} failed: {exc}") from exc
            print(f"atedm_kernels: WARNING: building {what} failed ({exc}); installing without it")


setup(
    version=VERSION,
    ext_modules=[CMakeExtension("atedm_kernels._C"), CMakeExtension("atedm_kernels._cpu")],
    cmdclass={"build_ext": CMakeBuild},
)
