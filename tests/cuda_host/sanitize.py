"""Runs the CUDA kernel tests on a sanitizer build of the CPU test build, one command each (docs/build.md,
"Verification of the CUDA kernels"):

    python -m tests.cuda_host.sanitize address   # AddressSanitizer + UBSan: every emulated case of test_cuda_kernels.py
    python -m tests.cuda_host.sanitize thread    # ThreadSanitizer: the emulated cases at N <= 100 and the copies

Both poison shared memory before every block (always on) and shuffle the order of blocks and of ready threads
(CUDA_HOST_SHUFFLE). The sanitizer runtime is preloaded into the Python process that loads the library; any report
fails the run. Further arguments go to pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .build import HERE, build, compiler

TESTS = str(HERE.parent / "test_cuda_kernels.py")
PROFILES = {
    "address": ["-k", "emulated"],
    # ThreadSanitizer runs each fiber switch through its race detector: small sizes only.
    "thread": ["-k", "emulated and not 1000 and not 1024 and not 4096 and not unaligned_and_strided_maps"],
}
RUNTIMES = {"address": "libasan.so", "thread": "libtsan.so"}
OPTIONS = {
    "address": ("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1"),  # Python and torch keep memory until exit
    "thread": ("TSAN_OPTIONS", "halt_on_error=1:report_signal_unsafe=0"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in PROFILES:
        print(f"usage: python -m tests.cuda_host.sanitize {{{','.join(PROFILES)}}} [pytest arguments]")
        return 2
    sanitizer, extra = argv[0], argv[1:]
    build(sanitizer)  # compile errors surface here, outside the preloaded process
    # The sanitizer runtime first; libstdc++ with it, so its __cxa_throw interceptor finds the real one at start.
    preload = " ".join(
        subprocess.run([compiler(), f"-print-file-name={library}"], capture_output=True, text=True,
                       check=True).stdout.strip()
        for library in (RUNTIMES[sanitizer], "libstdc++.so.6")
    )
    name, value = OPTIONS[sanitizer]
    env = dict(os.environ, LD_PRELOAD=preload, ATEDM_CUDA_HOST_SANITIZER=sanitizer, OMP_NUM_THREADS="1")
    env.setdefault("CUDA_HOST_SHUFFLE", "20261201")
    env[name] = value
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", TESTS, *PROFILES[sanitizer], *extra]
    print(" ".join(f"{k}={env[k]}" for k in ("LD_PRELOAD", name, "CUDA_HOST_SHUFFLE")), " ".join(command))
    return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
