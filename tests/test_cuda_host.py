"""The CUDA-on-CPU test build itself (tests/cuda_host): its intrinsics and runtime calls against their CUDA
definitions, misuse refused with one line on stderr instead of a hang or a guess, and (marker ``slow``) the kernel
tests under AddressSanitizer+UBSan and ThreadSanitizer. Self-test cases run the program ``selftest.cu`` in a
subprocess, since a refusal aborts it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .cuda_host.build import HERE, ROOT, build_program, compiler

# Each misuse, and the line that must refuse it.
MISUSE = {
    "divergent_barrier": r"reaches __syncthreads\(\) at \S+selftest.cu:\d+ while 16 threads wait at the one at ",
    "barrier_never_reached": r"deadlock: 1 of 32 live threads wait at __syncthreads\(\) .* lanes 0xfffffffe wait in "
    r"__shfl_sync\(mask 0xffffffff\) .* for lanes 0x00000001 \(of which 0x00000001 wait at __syncthreads\(\)\)",
    "absent_lane": r"thread \(15,0,0\): __shfl_down_sync\(mask 0x0000ffff\) at \S+ reads lane 16, which the mask "
    r"does not name",
    "exited_lane": r"thread \(16,0,0\): exits while lanes 0x0000ffff of its warp wait in __shfl_up_sync",
    "nonexistent_lane": r"mask 0xffffffff names lanes 0xfff00000, which do not exist in this block",
    "foreign_mask": r"thread \(3,0,0\): __shfl_sync at \S+ with mask 0x00000001, which does not name its own lane 3",
    "mixed_intrinsics": r"__shfl_up_sync\(mask 0xffffffff, width 32\) at \S+ while lanes \S+ of its warp wait in "
    r"__shfl_down_sync",
    "dynamic_overflow": r"wrote dynamic shared memory at byte 64, past the launch's 64 bytes",
}


@pytest.fixture(scope="session")
def selftest():
    if compiler() is None:
        pytest.skip("no C++ compiler ($CXX or g++): the CPU test build cannot be made")
    return build_program(HERE / "selftest.cu")


def _run(program, case: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_HOST_SHUFFLE"}
    return subprocess.run([str(program), case], capture_output=True, text=True, timeout=120, env=env)


def test_intrinsics_and_runtime_calls_follow_cuda(selftest):
    result = _run(selftest, "semantics")
    assert result.returncode == 0 and result.stdout == "ok\n", result.stdout + result.stderr


@pytest.mark.parametrize("case", sorted(MISUSE))
def test_misuse_is_refused_in_one_line(selftest, case):
    result = _run(selftest, case)
    assert result.returncode != 0 and "not refused" not in result.stdout, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cuda_host: {case}"), result.stderr
    assert re.search(MISUSE[case], lines[0]), lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("sanitizer", ["address", "thread"])
def test_kernel_tests_are_clean_under_sanitizers(sanitizer):
    if compiler() is None:
        pytest.skip("no C++ compiler ($CXX or g++)")
    result = subprocess.run([sys.executable, "-m", "tests.cuda_host.sanitize", sanitizer], cwd=ROOT,
                            capture_output=True, text=True, timeout=3600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    assert re.search(r"\d+ passed", log) and "ERROR: AddressSanitizer" not in log and "WARNING: ThreadSanitizer" not in log
