"""Every Triton kernel configuration the dispatcher can choose, compiled ahead of time, no GPU.

For each embedding width class (BLOCK_D = 16 ... 1024), each input dtype (float32, float16,
bfloat16) and each form of a kernel (its HAS_ flags) that the launchers in kernels/triton_loss.py
and kernels/triton_aligned.py start, the kernel is compiled with the sizes the launchers derive
from `kernels.triton_loss.compiled_config` for sm_80 (A100) and sm_90 (H100, H200) through
triton.compile(ASTSource(...), target=GPUTarget(...)); ptxas (shipped in triton's nvidia
backend) reports registers, spills and stack. A configuration fails the check when

    shared memory > the per-block maximum (sm_90: 227 KiB of the SM's 228; sm_80: 163 of 164),
    spill stores or loads > SPILL_LIMIT bytes per thread,
    registers > 255 per thread,

which on a GPU would be a launch failure (OutOfResources) or slow local-memory traffic. The
table also reports, from the compiled TTGIR, which matrix instructions the dots use (v3 is
Hopper's wgmma, v2 mma.sync, "-" the FMA units) and by how much the most replicated dot is
recomputed across warps ("redundant x"); these two are reported, not checked: which blocks
and warps are fastest despite them is a question for a GPU (bench/results/kernel_passes.md).
Pointers are taken as 16-byte aligned and N, K, D, k_per_split and n_per_split as multiples of
16, as at training sizes. Results are cached by a key of the triton version, the kernel source
and the configuration, so unchanged kernels are not compiled again:

    python tools/kernel_compile.py                  # table; exit 1 if a configuration fails
    python tools/kernel_compile.py --write          # also bench/results/kernel_compile_table.*

Run with TRITON_INTERPRET unset (interpreted kernels cannot be compiled). Without --cache the
committed bench/results/kernel_compile_table.json is the cache; new figures are added to it,
and --write keeps only the current ones and writes the .md table beside it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas -v output, printed by triton
os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # run ptxas even where triton's own cache has it
if "TRITON_CACHE_DIR" not in os.environ:  # a scratch cache, so ~/.triton is left alone
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="kernel-compile-")
    atexit.register(shutil.rmtree, os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))  # harness.py

import torch  # noqa: E402
import triton  # noqa: E402
from fastproto.kernels import triton_kernels  # noqa: E402
from fastproto.kernels.triton_aligned import aligned_config  # noqa: E402
from fastproto.kernels.triton_loss import (  # noqa: E402
    MAX_DIM,
    backward_config,
    compiled_config,
    fuses_backward,
    mix_config,
)
from harness import RESULTS_DIR, git_commit  # noqa: E402
from mma_layouts import mma_figures  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ARCHS = {80: 163 * 1024, 90: 227 * 1024}  # compute capability -> shared memory per block
# Bytes per thread: a few dozen bytes of spill are noise, hundreds are a configuration whose
# blocks are too large; 128 leaves room for compiler drift and catches the heavy cases.
SPILL_LIMIT = 128
MAX_REGISTERS = 255
DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
TABLE = RESULTS_DIR / "kernel_compile_table"
SOURCE = Path(triton_kernels.__file__)

# argument types: pointers to embeddings or prototypes take the input dtype (IN), other pointers
# are float32 (no tag), scalars are tagged with their type
ARGS = {
    "_row_lse_kernel": "Y:IN W:IN BIAS CENTER OUT_MAX OUT_SUM OUT_MAX0 OUT_SUM0 N:i32 K:i32 D:i32 "
    "inv_temp:fp32 k_per_split:i32",
    "_column_mix_kernel": "Y:IN W:IN BIAS SHIFT OUT N:i32 K:i32 D:i32 inv_temp:fp32 "
    "n_per_split:i32",
    "_teacher_mix_kernel": "Y:IN W:IN BIAS SHIFT M:IN MB R:IN RV OUT OUT_B QZ COL QC CENTER LSE0 "
    "COL_P0 N:i32 K:i32 D:i32 inv_temp:fp32 k_per_split:i32",
    "_student_grad_kernel": "Y:IN W:IN BIAS SHIFT DY DW DB N:i32 K:i32 D:i32 inv_temp:fp32 "
    "k_per_split:i32",
    "_aligned_grad_kernel": "YS:IN WS:IN BS LSE_S YT:IN WT:IN BT LSE_T ROW_W DY DW DB COL_Q "
    "CROSS CENTER LSE0 COL_P0 N:i32 K:i32 D:i32 inv_ts:fp32 inv_tt:fp32 k_per_split:i32",
}
# (kernel, extra constexprs) as launched: the row log-sum-exp with and without its uncentred
# twin; _column_mix (centring's column sums); the forward's _teacher_mix with V and q^T Z, V
# alone (frozen prototypes, or the first of two launches) and q^T Z alone (the second), the
# first two with and without the uncentred column sums (HAS_RAW); the backward's _student_grad
# with dY and dW/dB (training; where fuses_backward allows), dY alone (prototypes frozen, or the
# first of two launches) and dW/dB alone (embeddings detached); the aligned-rows sweep
# (kernels/triton_aligned.py) with the same three and with neither (no grad mode: the loss
# alone), each with and without the uncentred column sums (HAS_RAW, probability centring's
# statistic)
LAUNCHES: list[tuple[str, dict[str, bool]]] = [
    *(("_row_lse_kernel", {"HAS_RAW": raw}) for raw in (False, True)),
    ("_column_mix_kernel", {}),
    *(
        ("_teacher_mix_kernel", {"HAS_V": v, "HAS_M": m, "HAS_RAW": raw})
        for v, m, raw in (
            (True, True, False),
            (True, True, True),
            (True, False, False),
            (True, False, True),
            (False, True, False),
        )
    ),
    *(
        ("_student_grad_kernel", {"HAS_DY": dy, "HAS_DW": dw})
        for dy, dw in ((True, True), (True, False), (False, True))
    ),
    *(
        ("_aligned_grad_kernel", {"HAS_DY": dy, "HAS_DW": dw, "HAS_RAW": raw})
        for dy, dw in ((True, True), (True, False), (False, True), (False, False))
        for raw in (False, True)
    ),
]


@dataclass(frozen=True)
class Job:
    arch: int
    kernel: str
    dtype: str
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int
    num_stages: int

    def key(self, source_hash: str) -> str:
        text = json.dumps(
            [
                FIGURES,
                triton.__version__,
                source_hash,
                ARGS[self.kernel],
                self.arch,
                self.kernel,
                self.dtype,
                self.constexprs,
                self.num_warps,
                self.num_stages,
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def label(self) -> str:
        c = dict(self.constexprs)
        flags = "".join(
            f" {k}" for k in ("HAS_V", "HAS_M", "HAS_DY", "HAS_DW", "HAS_RAW") if c.get(k)
        )
        return f"{self.kernel}{flags}"


def _launch_config(
    kernel: str, extra: dict[str, bool], block_d: int, dtype: torch.dtype
) -> dict[str, object] | None:
    """The configuration the launchers give `kernel` at this width and dtype; None where that
    form is never launched (the fused backward where fuses_backward says two launches, the
    aligned sweep where aligned_config sends the rows to the general kernels)."""
    cfg = compiled_config(block_d, dtype)
    if kernel == "_aligned_grad_kernel":
        return aligned_config(cfg)
    if kernel == "_teacher_mix_kernel":  # both sums in one launch only where fuses_backward
        cfg = mix_config(cfg)
        return None if extra["HAS_V"] and extra["HAS_M"] and not fuses_backward(cfg) else cfg
    if kernel != "_student_grad_kernel":
        return dict(cfg)
    cfg = backward_config(cfg)
    fused = extra["HAS_DY"] and extra["HAS_DW"]
    return None if fused and not fuses_backward(cfg) else cfg


def jobs() -> list[Job]:
    """Every (arch, kernel form, dtype, config) the dispatcher can reach."""
    out = []
    block_ds = [16 << i for i in range((MAX_DIM // 16).bit_length())]  # 16 ... MAX_DIM
    for arch in ARCHS:
        for dtype, short in DTYPES.items():
            for block_d in block_ds:
                for kernel, extra in LAUNCHES:
                    cfg = _launch_config(kernel, extra, block_d, dtype)
                    if cfg is None:
                        continue
                    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
                    consts = tuple(sorted({**cfg, **extra}.items()))
                    out.append(Job(arch, kernel, short, consts, warps, stages))
    return out


FIGURES = 2  # version of the figures compile_one returns (2: the mma columns)


PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def compile_one(job: Job) -> dict[str, object]:
    """Compile `job` for its target; -> its resource figures (shared bytes, ptxas's numbers)."""
    fn = getattr(triton_kernels, job.kernel)
    types = {}
    for item in ARGS[job.kernel].split():
        name, _, kind = item.partition(":")
        types[name] = f"*{job.dtype}" if kind == "IN" else (kind or "*fp32")
    untyped = [p.name for p in fn.params if not p.is_constexpr and p.name not in types]
    if untyped:  # else they would be compiled as constexpr None, not as the launch passes them
        raise RuntimeError(f"ARGS[{job.kernel!r}] lacks the arguments {untyped}")
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    # 16-byte aligned pointers and ints divisible by 16, as triton specialises them at launch
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if types.get(name, "fp32") != "fp32"
    }
    src = ASTSource(fn, signature, constexprs=dict(job.constexprs), attrs=attrs)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", job.arch, 32),
            options={"num_warps": job.num_warps, "num_stages": job.num_stages},
        )
    text = log.getvalue()
    figures: dict[str, object] = {
        "shared": int(compiled.metadata.shared),
        **mma_figures(compiled.asm["ttgir"]),
    }
    for name, pattern in PTXAS.items():
        found = pattern.search(text)
        if found is None:
            raise RuntimeError(f"no '{name}' in the ptxas log of {job}:\n{text}")
        figures[name] = int(found.group(1))
    return figures


def problems(job: Job, fig: dict[str, object]) -> list[str]:
    found = []
    shared, limit = int(fig["shared"]), ARCHS[job.arch]  # type: ignore[call-overload]
    if shared > limit:
        found.append(f"shared memory {shared} B > {limit} B")
    spill = max(int(fig["spill_stores"]), int(fig["spill_loads"]))  # type: ignore[call-overload]
    if spill > SPILL_LIMIT:
        found.append(f"spills {spill} B > {SPILL_LIMIT} B")
    if int(fig["registers"]) > MAX_REGISTERS:  # type: ignore[call-overload]
        found.append(f"registers {fig['registers']} > {MAX_REGISTERS}")
    return found


def run(cache_path: Path, workers: int, prune: bool) -> tuple[list[tuple[Job, dict]], int]:
    """(job, figures) for every job, compiling only what the cache lacks; -> also the count
    compiled. The cache file gains the new figures; with `prune` it keeps only current ones."""
    source_hash = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    cached = json.loads(cache_path.read_text())["entries"] if cache_path.exists() else {}
    todo = [j for j in jobs() if j.key(source_hash) not in cached]
    if todo:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for job, fig in zip(todo, pool.map(compile_one, todo), strict=True):
                cached[job.key(source_hash)] = fig
    results = [(j, cached[j.key(source_hash)]) for j in jobs()]
    keep = {j.key(source_hash): fig for j, fig in results} if prune else cached
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_text(
        json.dumps({"triton": triton.__version__, "entries": keep}, indent=1, sort_keys=True) + "\n"
    )
    return results, len(todo)


def table(results: list[tuple[Job, dict]]) -> list[str]:
    lines = [
        "| arch | kernel | dtype | BLOCK_N x K | BLOCK_D | warps | stages | registers | "
        "spill st/ld B | stack B | shared KiB | limit KiB | mma | redundant x | ok |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|---|",
    ]
    for job, fig in results:
        c = dict(job.constexprs)
        bad = problems(job, fig)
        lines.append(
            f"| sm_{job.arch} | {job.label()} | {job.dtype} | {c['BLOCK_N']} x {c['BLOCK_K']} "
            f"| {c['BLOCK_D']} "
            f"| {job.num_warps} | {job.num_stages} | {fig['registers']} | {fig['spill_stores']}"
            f"/{fig['spill_loads']} | {fig['stack']} | {int(fig['shared']) / 1024:.1f} | "
            f"{ARCHS[job.arch] // 1024} | {fig['mma']} | {fig['redundancy']} | "
            f"{'; '.join(bad) if bad else 'yes'} |"
        )
    return lines


def write_markdown(lines: list[str], path: Path, cache: Path) -> None:
    committed = cache.resolve() == TABLE.with_suffix(".json").resolve()
    command = "--write" if committed else f"--write --cache {cache}"
    checked = ", checked by tests/test_kernel_compile.py" if committed else ""
    head = [
        "# Triton kernels compiled ahead of time for sm_80 and sm_90",
        "",
        f"{dt.date.today().isoformat()}, triton {triton.__version__}, torch {torch.__version__}, "
        f"commit {git_commit()}; compiled on a CPU machine (no GPU) by "
        f"`python tools/kernel_compile.py {command}`{checked}.",
        f"Limits: shared memory per block (sm_90 {ARCHS[90] // 1024} KiB, sm_80 "
        f"{ARCHS[80] // 1024} KiB), spill stores and loads <= {SPILL_LIMIT} B per thread, "
        f"registers <= {MAX_REGISTERS}.",
        "",
    ]
    path.write_text("\n".join(head + lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--cache",
        type=Path,
        default=TABLE.with_suffix(".json"),
        help="JSON of compiled figures, read and rewritten (default: the committed "
        "bench/results/kernel_compile_table.json)",
    )
    ap.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compiler processes"
    )
    ap.add_argument(
        "--write",
        action="store_true",
        help="write the markdown table beside the cache, which keeps only the current figures",
    )
    args = ap.parse_args(argv)
    results, compiled = run(args.cache, args.jobs, prune=args.write)
    lines = table(results)
    print("\n".join(lines))
    failed = [(j, problems(j, f)) for j, f in results if problems(j, f)]
    print(f"{len(results)} configurations, {compiled} compiled now, {len(failed)} over a limit")
    if args.write:
        write_markdown(lines, args.cache.with_suffix(".md"), args.cache)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
