"""Compile every autotune config of the Triton attention kernels for several GPU targets, on a machine without a GPU.

For each kernel (``fwd``: the flash forward, with and without the LSE; ``map``: the map pass), input dtype, head-dim
class and map dtype the launcher can pass, and each of its candidate tiles, ``triton.compile`` builds the kernel
from an ``ASTSource`` for ``GPUTarget("cuda", arch, 32)`` and records Triton's shared memory (``metadata.shared``)
and ptxas's registers and spill bytes (``ptxas -v``, from the ptxas bundled with Triton). Arguments are specialised
as Triton's launcher specialises a call on contiguous inputs with B=2, H=10, N=M=4096: 16-byte-aligned pointers,
integers that are multiples of 16 marked so, integers equal to 1 turned into constants.

    python benchmarks/triton_compile_matrix.py            # the full matrix, into OUT (benchmarks/results/...json)
    python benchmarks/triton_compile_matrix.py --subset --out /tmp/m.json        # the subset CI compiles
    python benchmarks/triton_compile_matrix.py --check benchmarks/results/triton_compile_matrix.json  # check only

``check(table)`` lists what is wrong with a table (used by ``tests/test_triton_compile_matrix.py``): a config that
does not compile, a (kernel, dtype, D, map/LSE variant, target) where no config fits the target's shared memory, a
config whose shared memory the autotuner's pruning underestimates, a spilling config among those the autotuner
would consider for fp16/bf16 at D in {40, 64, 80, 128} on a tensor-core target (sm_80 and later), and a table
that does not match the kernels' current tiles.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# Compiled, never interpreted kernels: decided when triton.language is first imported. A fresh cache, so that
# every config really runs ptxas (a cache hit has no ptxas log).
os.environ["TRITON_INTERPRET"] = "0"
_CACHE = tempfile.mkdtemp(prefix="atedm-triton-matrix-")
os.environ["TRITON_CACHE_DIR"] = _CACHE
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from atedm_kernels.kernels import triton_attention as ta  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "triton_compile_matrix.json"

# The shape whose specialisation is compiled (SD-XL's 4096-token level at batch 2).
BATCH, HEADS, N_Q, N_K = 2, 10, 4096, 4096
DTYPES = ("fp16", "bf16", "fp32")
MAP_DTYPES = ("fp16", "bf16", "fp32")
# Head dims: the tile widths the launcher makes for SD models (BLOCK_D = 64, 128, 256; the 16- and 32-wide classes of
# D <= 32 are left out for time), each at a multiple of 16 and at a padded size (40: SD 1.x, 8-element rows; 80 and
# 160: masked 128- and 256-wide tiles).
HEAD_DIMS = (40, 64, 80, 128, 160, 256)
# The LSE-free forward (plain attention) and the bf16/fp32 maps change one store each: compiled at D = 64 on sm_89
# and sm_90 only.
VARIANT_DIMS, VARIANT_TARGETS = (64,), (89, 90)
# Targets, in the order they are compiled: RTX 40 (the 99 KiB of RTX 30/40 blocks), H100, A100, RTX 50, T4.
TARGETS = (89, 90, 80, 120, 75)
# The groups a table must hold even when its run was cut short (--finish): both kernels, every dtype, the head dims
# of the spill rule and the fp32 wide tiles, on the 99 KiB and the 227 KiB targets.
REQUIRED = {"dtype_dims": [(d, h) for d in ("fp16", "bf16") for h in (40, 64, 80, 128)] + [("fp32", 160)],
            "targets": (89, 90)}
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SPILL_FREE_DIMS = (40, 64, 80, 128)  # fp16/bf16 head dims at which no config the autotuner considers may spill ...
SPILL_FREE_TARGETS = (80, 89, 90, 120)  # ... on the tensor-core targets (sm_75's 16-bit tiles: docs/build.md)

# The representative subset CI compiles (18 compiles; 2-3 minutes on this CI machine's 2 cores while loaded): both
# kernels where the measured problems were (fp16 D=40: unaligned rows; bf16 D=128: spills; fp32 D=160: shared
# memory), on sm_89, the 99 KiB target.
SUBSET = {"dtype_dims": (("fp16", 40), ("bf16", 128), ("fp32", 160)), "targets": (89,)}


def _signature(fn, args: dict, constexprs: dict):
    """(signature, constexprs, attrs) for ``ASTSource``, specialised as Triton's launcher does."""
    signature, constants, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        value = args[name]
        if isinstance(value, str):  # a pointer, e.g. "*fp16"; torch allocations are 16-byte aligned
            signature[name] = value
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:
            signature[name] = "constexpr"
            constants[name] = 1
        else:
            signature[name] = "i32" if abs(value) < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constants, attrs


def _contiguous_strides(n: int, head_dim: int) -> tuple[int, int, int, int]:
    return (HEADS * n * head_dim, n * head_dim, head_dim, 1)  # [B, H, n, D]


def _kernel_call(case: dict):
    """(JITFunction, runtime args, constexprs without the tile) of one case, as the launcher would call it."""
    dtype, head_dim = case["dtype"], case["head_dim"]
    torch_dtype = TORCH_DTYPES[dtype]
    q_strides, k_strides = _contiguous_strides(N_Q, head_dim), _contiguous_strides(N_K, head_dim)
    constexprs = {
        "HEAD_DIM": head_dim,
        "BLOCK_D": ta.block_d(head_dim),
        "ROW_ALIGN": ta.row_align_of_strides(q_strides, k_strides),
        **ta.dot_args(torch_dtype, interpreted=False),
    }
    args = {"H": HEADS, "N": N_Q, "M": N_K, "qk_scale": head_dim**-0.5 * ta.LOG2E}
    for prefix, strides in (("q", q_strides), ("k", k_strides), ("v", k_strides), ("o", q_strides)):
        args.update({f"stride_{prefix}{axis}": s for axis, s in zip("bhnd", strides)})
    if case["kernel"] == "fwd":
        fn = ta._attn_fwd_kernel.fn
        args.update(Q=f"*{dtype}", K=f"*{dtype}", V=f"*{dtype}", Out=f"*{dtype}", Lse="*fp32")
        constexprs["WRITE_LSE"] = case["write_lse"]
        constexprs["STATIC_M"] = ta.loop_bound(N_K, interpreted=False)
    else:
        fn = ta._attn_map_kernel.fn
        args.update(Q=f"*{dtype}", K=f"*{dtype}", Lse="*fp32", Amap=f"*{case['map_dtype']}", inv_heads=1.0 / HEADS)
        args.update(stride_ab=N_Q * N_K, stride_an=N_K, stride_am=1)
        constexprs["STATIC_H"] = ta.loop_bound(HEADS, interpreted=False)
    return fn, args, constexprs


def _bundled_ptxas() -> Path:
    """The ptxas Triton ships and compiles with."""
    return Path(triton.backends.nvidia.__file__).parent / "bin" / "ptxas"


def _ptxas_log(kernel, log: str) -> str:
    """ptxas's ``-v`` report of ``kernel``: Triton's own (printed where ``knobs.nvidia.dump_ptxas_log`` exists, 3.5 and
    later), else the bundled ptxas run again on the kernel's PTX for its ``.target`` (older Triton deletes its log)."""
    if "Used " in log:
        return log
    ptx = kernel.asm["ptx"]
    arch = re.search(r"^\.target\s+(sm_\w+)", ptx, re.MULTILINE)[1]
    ptxas = _bundled_ptxas()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        done = subprocess.run([str(ptxas), "-v", f"--gpu-name={arch}", str(source), "-o", str(Path(tmp) / "k.o")],
                              capture_output=True, text=True)
    return done.stdout + done.stderr


def _ptxas_usage(log: str) -> dict:
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        raise RuntimeError(f"no ptxas -v report in the compile log:\n{log}")
    return {"registers": int(regs[1]), "spill_stores": int(spills[1]), "spill_loads": int(spills[2])}


def compile_one(case: dict) -> dict:
    """Compile one (case, tile, target); the row for the table."""
    warnings.simplefilter("ignore")
    block_m, block_n, num_warps, num_stages = case["tile"]
    fn, args, constexprs = _kernel_call(case)
    signature, constants, attrs = _signature(fn, args, {**constexprs, "BLOCK_M": block_m, "BLOCK_N": block_n})
    row = dict(case)
    start = time.perf_counter()
    log = io.StringIO()
    try:
        triton.knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(
                ASTSource(fn, signature, constants, attrs),
                target=GPUTarget("cuda", case["target"], 32),
                options={"num_warps": num_warps, "num_stages": num_stages},
            )
        row.update(shared=kernel.metadata.shared, **_ptxas_usage(_ptxas_log(kernel, log.getvalue())), error=None)
    except Exception as exc:  # recorded: check() reports it
        row.update(shared=None, registers=None, spill_stores=None, spill_loads=None,
                   error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}")
    row["compile_s"] = round(time.perf_counter() - start, 2)
    return row


def cases(subset: bool = False) -> list[dict]:
    """Every (kernel, dtype, D, map dtype or LSE variant, tile, target) of the full matrix or the CI subset, target
    by target."""
    if subset:
        dtype_dims, targets = SUBSET["dtype_dims"], SUBSET["targets"]
    else:
        dtype_dims, targets = list(itertools.product(DTYPES, HEAD_DIMS)), TARGETS
    out = []
    for target, (dtype, head_dim) in itertools.product(targets, dtype_dims):
        all_variants = not subset and head_dim in VARIANT_DIMS and target in VARIANT_TARGETS
        lse, maps = ((True, False), MAP_DTYPES) if all_variants else ((True,), ("fp16",))
        variants = [{"kernel": "fwd", "write_lse": w, "map_dtype": None} for w in lse]
        variants += [{"kernel": "map", "write_lse": None, "map_dtype": m} for m in maps]
        for variant in variants:
            tiles = ta.tile_candidates(variant["kernel"], TORCH_DTYPES[dtype], ta.block_d(head_dim), target)
            for tile in tiles:
                out.append({**variant, "dtype": dtype, "head_dim": head_dim, "target": target, "tile": list(tile)})
    return out


CASE_KEYS = ("kernel", "write_lse", "map_dtype", "dtype", "head_dim", "target", "tile")


def _group_key(row: dict) -> tuple:
    return (row["kernel"], row["dtype"], row["head_dim"], row["write_lse"], row["map_dtype"], row["target"])


def _estimate(row: dict) -> int:
    tile_d = ta.block_d(row["head_dim"])
    return ta.shared_memory_estimate(row["kernel"], tuple(row["tile"]), tile_d, TORCH_DTYPES[row["dtype"]])


def check(table: dict) -> list[str]:
    """What is wrong with ``table`` (empty when all is well); see the module docstring."""
    problems = []
    all_cases = cases(table["subset"])
    if table.get("complete", True):
        required = {_group_key(c) for c in all_cases}
    else:
        required = {_group_key(c) for c in all_cases if c["target"] in REQUIRED["targets"]
                    and (c["dtype"], c["head_dim"]) in REQUIRED["dtype_dims"]}
    tiles_now: dict[tuple, list] = {}
    for c in all_cases:
        tiles_now.setdefault(_group_key(c), []).append(c["tile"])
    tiles_table: dict[tuple, list] = {}
    for row in table["rows"]:
        tiles_table.setdefault(_group_key(row), []).append(row["tile"])
    stale = [k for k, tiles in tiles_table.items() if tiles_now.get(k) != tiles]
    missing = required - set(tiles_table)
    if stale or missing:
        problems.append(
            f"the table does not match the kernels' current tiles ({len(stale)} groups differ, {len(missing)} "
            "required groups missing): run benchmarks/triton_compile_matrix.py again"
        )
    groups: dict[tuple, list[dict]] = {}
    for row in table["rows"]:
        groups.setdefault(_group_key(row), []).append(row)
        name = f"{_group_key(row)} tile {tuple(row['tile'])}"
        if row["error"] is not None:
            problems.append(f"{name} does not compile: {row['error']}")
            continue
        estimate = _estimate(row)
        if estimate < row["shared"]:
            problems.append(f"{name}: the pruning estimates {estimate} B of shared memory, Triton uses {row['shared']}")
        admitted = estimate <= ta.SHARED_MEMORY_PER_BLOCK[row["target"]]
        spill_checked = (
            row["dtype"] != "fp32" and row["head_dim"] in SPILL_FREE_DIMS and row["target"] in SPILL_FREE_TARGETS
        )
        if admitted and spill_checked and row["spill_stores"]:
            problems.append(f"{name} spills {row['spill_stores']} B and the autotuner considers it")
    for key, rows in groups.items():
        limit = ta.SHARED_MEMORY_PER_BLOCK[key[-1]]
        if not any(r["error"] is None and r["shared"] <= limit for r in rows):
            problems.append(f"{key}: no config fits the {limit} B of shared memory per block of sm_{key[-1]}")
        if not any(_estimate(r) <= limit for r in rows):
            problems.append(f"{key}: the autotuner's pruning leaves no config for sm_{key[-1]}")
    return problems


def _ptxas_version() -> str:
    done = subprocess.run([str(_bundled_ptxas()), "--version"], capture_output=True, text=True)
    out = done.stdout.strip().splitlines()
    return out[-1] if out else "unknown"


def run(subset: bool, jobs: int, partial: Path, finish: bool = False) -> dict:
    """Compile the cases (each row appended to ``partial`` as it completes; rows already there are kept, so an
    interrupted run resumes) and return the table. ``finish``: no compiling, the table of the rows in ``partial``."""
    done = [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    keys = {json.dumps({k: r[k] for k in CASE_KEYS}, sort_keys=True) for r in done}
    all_cases = cases(subset)
    todo = [] if finish else [c for c in all_cases if json.dumps(c, sort_keys=True) not in keys]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as pool, partial.open("a") as log:
        for row in pool.map(compile_one, todo):
            log.write(json.dumps(row) + "\n")
            log.flush()
            done.append(row)
    order = {json.dumps(c, sort_keys=True): i for i, c in enumerate(all_cases)}
    rows = sorted(done, key=lambda r: order.get(json.dumps({k: r[k] for k in CASE_KEYS}, sort_keys=True), len(order)))
    if len(rows) < len(all_cases):  # cut short: keep the groups whose every tile was compiled
        size: dict[tuple, int] = {}
        for c in all_cases:
            size[_group_key(c)] = size.get(_group_key(c), 0) + 1
        count: dict[tuple, int] = {}
        for r in rows:
            count[_group_key(r)] = count.get(_group_key(r), 0) + 1
        rows = [r for r in rows if count[_group_key(r)] == size.get(_group_key(r))]
    return {
        "what": "Triton attention kernels compiled per autotune config and target, without a GPU "
        "(benchmarks/triton_compile_matrix.py); shared = Triton's metadata.shared in bytes, registers and spill "
        "bytes from ptxas -v",
        "triton": triton.__version__,
        "ptxas": _ptxas_version(),
        "specialisation": {"B": BATCH, "H": HEADS, "N": N_Q, "M": N_K, "layout": "contiguous [B, H, N, D]"},
        "subset": subset,
        "complete": len(rows) == len(all_cases),
        "groups_compiled": f"{len({_group_key(r) for r in rows})} of {len({_group_key(c) for c in all_cases})}",
        "shared_memory_per_block": {str(k): v for k, v in ta.SHARED_MEMORY_PER_BLOCK.items()},
        "wall_s_last_run": round(time.perf_counter() - start, 1),
        "rows": rows,
    }


def dumps(table: dict) -> str:
    """The table as JSON, one row per line (diffable)."""
    head = json.dumps({k: v for k, v in table.items() if k != "rows"}, indent=1)[:-2]
    rows = ",\n".join("  " + json.dumps(row) for row in table["rows"])
    return f'{head},\n "rows": [\n{rows}\n ]\n}}\n'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", action="store_true", help="only the representative subset CI compiles")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON output (default {OUT} for the full matrix)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel compiles")
    parser.add_argument("--check", type=Path, default=None, metavar="JSON", help="only check an existing table")
    parser.add_argument("--finish", action="store_true", help="write the table from an interrupted run's rows")
    args = parser.parse_args(argv)
    if args.check is not None:
        table = json.loads(args.check.read_text())
        print(f"{args.check}: {len(table['rows'])} compiles (Triton {table['triton']})")
    else:
        if args.out is None and args.subset:
            parser.error("--subset needs --out (the committed table is the full matrix)")
        out = args.out or OUT
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        table = run(args.subset, args.jobs, partial, finish=args.finish)
        out.write_text(dumps(table))
        if table["complete"]:
            partial.unlink(missing_ok=True)
        done = "complete" if table["complete"] else "INCOMPLETE"
        print(f"{len(table['rows'])} compiles ({done}), {table['wall_s_last_run']} s in this run -> {out}")
    problems = check(table)
    for line in problems:
        print("PROBLEM:", line)
    shutil.rmtree(_CACHE, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
