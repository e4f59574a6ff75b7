"""Forward + backward time and peak memory of the prototype loss alone, per implementation.

Presets follow iBOT ViT-S/16 (paper 1, Table 12: GPU memory vs K at batch 64 and 100), D = 256:

    cls-b{B}-k{K}    CLS rows: Ns = 12 B (2 global + 10 local crops), Nt = 2 B, P = 2
                     (each student crop against both global teacher views, except itself)
    patch-b{B}-k{K}  patch rows: Ns = Nt = 2 x 196 B tokens, P = 1 (token i against token i),
                     weight 1 on the masked tokens, masking ratio drawn in [0, 0.3] per view

for K in 1024 ... 1048576 and B in {64, 100}. Inputs are drawn on the device. Each (preset,
impl) prints time (median of the timed calls after the warm-up ones; CUDA events on GPU, with
the L2 cache flushed before each call) and peak extra memory: on CUDA max_memory_allocated
during those plain calls above what was allocated before them; on CPU each run is a fresh
child process (glibc mmap threshold fixed at 1 MiB) and the figure is its peak RSS (VmHWM,
reset after making the inputs) minus the RSS then. The
table ends with the slope of memory in K (MB per 1024 prototypes, least squares), the figure
paper 1 reports as ~800 MB for the whole iBOT step; on GPU it adds achieved TFLOP/s
(2 K D (3 Ns + Nt) useful flops) and GB/s (parameters, embeddings and their gradients, each
moved once) against the device's limits.

    python bench/prototype_loss.py --smoke                       # CI: tiny, CPU, seconds
    python bench/prototype_loss.py --device cpu --max-k 65536 --batch 64 --rows cls
    python bench/prototype_loss.py --device cuda --impl triton,chunked,reference
    python bench/prototype_loss.py --device cuda --dtype bfloat16 \
        --preset cls-b64-k65536:triton,reference cls-b64-k262144:triton   # impls per preset
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    RESULTS_DIR,
    Timing,
    append_rows,
    device_name,
    device_slug,
    make_row,
    time_and_peak,
)

K_VALUES = (1024, 2048, 4096, 8192, 10240, 16384, 32768, 65536, 131072, 262144, 524288, 1048576)
BATCHES = (64, 100)
DIM = 256
TOKENS = 196  # 14 x 14 patches of a 224 px global crop at patch size 16
# (memory bandwidth GB/s, dense fp16/bf16 tensor TFLOP/s, fp32 TFLOP/s) of SXM parts
DEVICE_LIMITS = {"H100": (3350.0, 989.0, 67.0), "H200": (4800.0, 989.0, 67.0)}


@dataclass(frozen=True)
class Preset:
    name: str
    rows: str  # "cls" or "patch"
    batch: int
    k: int

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(Ns, Nt, P)."""
        if self.rows == "cls":
            return 12 * self.batch, 2 * self.batch, 2
        return 2 * TOKENS * self.batch, 2 * TOKENS * self.batch, 1


def presets() -> dict[str, Preset]:
    table = {}
    for rows in ("cls", "patch"):
        for batch in BATCHES:
            for k in K_VALUES:
                name = f"{rows}-b{batch}-k{k}"
                table[name] = Preset(name, rows, batch, k)
    for k in (1024, 2048):  # --smoke
        table[f"smoke-k{k}"] = Preset(f"smoke-k{k}", "cls", 2, k)
    return table


def make_inputs(p: Preset, device: torch.device, dtype: torch.dtype) -> tuple:
    """Loss arguments for preset `p`, the differentiable ones first, drawn on `device`."""
    ns, nt, pairs = p.sizes
    g = torch.Generator(device=device).manual_seed(0)
    unit = torch.nn.functional.normalize

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, device=device)

    def protos() -> torch.Tensor:
        return unit(rand(p.k, DIM), dim=1) * (0.5 + 2.0 * uniform(p.k, 1))

    if p.rows == "cls":  # crop c of image i is row c * B + i; globals are crops 0 and 1
        crop = torch.arange(ns) // p.batch
        image = torch.arange(ns) % p.batch
        targets = torch.stack([image, p.batch + image], dim=1)  # teacher global views 0 and 1
        targets[crop == 0, 0] = -1  # a global view is not paired with itself
        targets[crop == 1, 1] = -1
        weights = torch.ones(ns, pairs)
    else:
        targets = torch.arange(ns)[:, None]
        ratio = 0.3 * uniform(ns // TOKENS, 1)  # per view
        weights = (uniform(ns // TOKENS, TOKENS) < ratio).float().reshape(ns, 1)
    student = unit(rand(ns, DIM), dim=1).to(device, dtype).requires_grad_()
    student_protos = protos().to(device, dtype).requires_grad_()
    teacher = unit(rand(nt, DIM), dim=1).to(device, dtype)
    rest = (
        protos().to(device, dtype),
        targets.to(device),
        weights.to(device, dtype),
        (0.1 * rand(p.k)).to(device, dtype),
    )
    return student, student_protos, teacher, rest


def step_fn(p: Preset, impl: str, device: torch.device, dtype: torch.dtype) -> Callable[[], None]:
    """A closure running forward + backward once on freshly made inputs; patch rows go through
    aligned_cross_entropy, as the iBOT loss does."""
    from fastproto.kernels import aligned_cross_entropy, prototype_cross_entropy

    student, student_protos, teacher, (teacher_protos, targets, weights, center) = make_inputs(
        p, device, dtype
    )

    def step() -> None:
        if p.rows == "patch":
            loss = aligned_cross_entropy(
                student,
                teacher,
                student_protos,
                teacher_protos,
                weights[:, 0],
                center,
                0.1,
                0.04,
                True,
                impl=impl,
            ).loss
        else:
            loss = prototype_cross_entropy(
                student,
                teacher,
                student_protos,
                teacher_protos,
                targets,
                weights,
                center,
                0.1,
                0.04,
                True,
                impl=impl,
            ).loss
        torch.autograd.grad(loss, [student, student_protos])

    return step


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    """Peak resident set size in MiB: VmHWM where readable, else ru_maxrss (KiB on Linux)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(
    p: Preset, impl: str, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int
) -> tuple[Timing, float]:
    """(seconds per forward + backward, peak extra MiB); MiB is nan where it cannot be isolated."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        step = step_fn(p, impl, device, dtype)
        # warm-up calls compile the kernels; the peak is taken over the plain timed calls
        timing, memory = time_and_peak(step, device, max(1, warmup), repeats)
        assert memory is not None
        return timing, memory.extra / 2**20
    step = step_fn(p, impl, device, dtype)
    _reset_peak_rss()  # else the peak of imports and input making hides a smaller step
    before = _peak_rss_mib()
    step()
    peak = _peak_rss_mib() - before
    return time_and_peak(step, device, warmup, repeats)[0], peak


def measure_in_child(
    p: Preset, impl: str, dtype: torch.dtype, warmup: int, repeats: int
) -> tuple[Timing, float]:
    """CPU: run `measure` in a fresh process so that its peak RSS belongs to this run alone."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        p.name,
        "--impl",
        impl,
        "--dtype",
        str(dtype)[6:],
        "--warmup",
        str(warmup),
        "--repeats",
        str(repeats),
    ]
    # glibc raises its mmap threshold after each large free (up to 32 MiB), after which freed
    # tiles stay in the heap and fragmentation shows up as peak RSS growing with the number of
    # blocks; a fixed threshold returns large blocks to the system, so RSS tracks live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return Timing(math.nan, math.nan, math.nan), math.nan
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return Timing(got["p50"], got["p20"], got["p80"]), got["peak_mib"]


def throughput(p: Preset, dtype: torch.dtype, seconds: float) -> tuple[float, float]:
    """(useful TFLOP/s, GB/s of compulsory traffic) of one forward + backward."""
    ns, nt, _ = p.sizes
    flops = 2.0 * p.k * DIM * (3 * ns + nt)  # logits s and t, then dY and dW
    size = torch.finfo(dtype).bits // 8
    traffic = size * DIM * (2 * p.k + ns + nt) + 4 * DIM * (p.k + ns)  # inputs; fp32 grads
    return flops / seconds / 1e12, traffic / seconds / 1e9


def limits(device: torch.device, dtype: torch.dtype) -> tuple[float, float] | None:
    """(GB/s, TFLOP/s) of the device for `dtype`, where known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (gbps, tensor_tf, fp32_tf) in DEVICE_LIMITS.items():
        if key in name:
            return gbps, fp32_tf if dtype == torch.float32 else tensor_tf
    return None


def select(args: argparse.Namespace, impls: list[str]) -> list[tuple[Preset, list[str]]]:
    """The presets to run, each with its implementations (NAME:impl,impl overrides --impl)."""
    table = presets()
    if args.smoke:
        return [(table["smoke-k1024"], impls), (table["smoke-k2048"], impls)]
    if args.preset:
        chosen = [name.partition(":") for name in args.preset]
        unknown = [name for name, _, _ in chosen if name not in table]
        if unknown:
            raise SystemExit(f"unknown preset(s) {unknown}; names look like cls-b64-k65536")
        return [(table[name], own.split(",") if own else impls) for name, _, own in chosen]
    return [
        (p, impls)
        for p in table.values()
        if not p.name.startswith("smoke")
        and p.k <= args.max_k
        and p.batch in args.batch
        and p.rows in args.rows
    ]


def run_one(
    p: Preset, impl: str, device: torch.device, args: argparse.Namespace, dtype: torch.dtype
) -> tuple[Timing, float]:
    nan = (Timing(math.nan, math.nan, math.nan), math.nan)
    if device.type == "cpu" and not args.smoke:
        return measure_in_child(p, impl, dtype, args.warmup, args.repeats)
    try:
        # in-process on CPU (--smoke): the peak is reset per run, heap reuse may blur it
        return measure(p, impl, device, dtype, args.warmup, args.repeats)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return nan
    except Exception:
        if device.type != "cuda":  # the CPU smoke run is a test: let it fail
            raise
        # a kernel that does not compile or launch on this GPU: its rows read nan, the
        # traceback goes to the log, and the points after it still run
        traceback.print_exc()
        torch.cuda.empty_cache()
        return nan


def slopes(results: list[tuple[Preset, str, Timing, float]]) -> dict[tuple[str, str, int], float]:
    """Least-squares MiB per 1024 prototypes for each (impl, rows, batch) with >= 2 points."""
    groups: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    for p, impl, _, mib in results:
        if math.isfinite(mib):
            groups.setdefault((impl, p.rows, p.batch), []).append((p.k / 1024, mib))
    out = {}
    for key, pts in groups.items():
        if len({x for x, _ in pts}) >= 2:
            mx = sum(x for x, _ in pts) / len(pts)
            my = sum(y for _, y in pts) / len(pts)
            out[key] = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return out


def report(
    results: list[tuple[Preset, str, Timing, float]], device: torch.device, dtype: torch.dtype
) -> list[str]:
    """The printed table, one line per (preset, impl), in the order of paper 1 Table 12."""
    lim = limits(device, dtype)
    head = f"{'rows':5} {'B':>4} {'K':>8} {'Ns':>6} {'Nt':>6} {'impl':9} {'ms':>10} {'MiB':>9}"
    lines = [head + ("   TFLOP/s    GB/s" if device.type == "cuda" else "")]
    for p, impl, t, mib in sorted(results, key=lambda r: (r[0].rows, r[0].batch, r[0].k, r[1])):
        ns, nt, _ = p.sizes
        line = f"{p.rows:5} {p.batch:>4} {p.k:>8} {ns:>6} {nt:>6} {impl:9} {t.p50 * 1e3:>10.2f} "
        line += f"{mib:>9.1f}" if math.isfinite(mib) else f"{'OOM/n.a.':>9}"
        if device.type == "cuda" and math.isfinite(t.p50):
            tf, gb = throughput(p, dtype, t.p50)
            line += f" {tf:>9.1f} {gb:>7.0f}"
        lines.append(line)
    if lim is not None:
        lines.append(f"device limits for {dtype}: {lim[1]:.0f} TFLOP/s, {lim[0]:.0f} GB/s")
    lines.append(
        "slope of peak extra memory (MiB per 1024 prototypes; paper 1 Table 12 ~800 MB "
        "for the whole iBOT step at B = 64):"
    )
    for (impl, rows, batch), slope in sorted(slopes(results).items()):
        lines.append(f"  {impl:9} {rows:5} B={batch:<4} {slope:9.2f}")
    return lines


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="two tiny presets on CPU (CI)")
    ap.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when available)",
    )
    ap.add_argument(
        "--impl",
        default=None,
        help="comma list of reference,chunked,triton (default: all three on cuda, "
        "reference,chunked on cpu)",
    )
    ap.add_argument("--max-k", type=int, default=max(K_VALUES), help="largest K to run")
    ap.add_argument("--batch", type=int, nargs="+", default=list(BATCHES), help="batch sizes")
    ap.add_argument(
        "--rows",
        nargs="+",
        default=["cls", "patch"],
        choices=["cls", "patch"],
        help="CLS-token rows, patch-token rows, or both",
    )
    ap.add_argument(
        "--preset",
        nargs="+",
        help="explicit preset names (overrides the sweep); NAME:impl,impl runs only "
        "those implementations on that preset",
    )
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="dtype of embeddings and prototypes",
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="CSV to append to (default bench/results/prototype_loss_<device>.csv; "
        "--smoke writes nothing unless given)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def child(args: argparse.Namespace) -> None:
    """Internal: measure one preset on CPU and print JSON (see measure_in_child)."""
    torch.manual_seed(0)
    t, mib = measure(
        presets()[args.child],
        args.impl,
        torch.device("cpu"),
        getattr(torch, args.dtype),
        args.warmup,
        args.repeats,
    )
    print(json.dumps({"p50": t.p50, "p20": t.p20, "p80": t.p80, "peak_mib": mib}))


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        return child(args)
    device = torch.device("cpu" if args.smoke else args.device)
    dtype = getattr(torch, args.dtype)
    default_impls = "reference,chunked,triton" if device.type == "cuda" else "reference,chunked"
    impls = (args.impl or default_impls).split(",")
    default_out = RESULTS_DIR / f"prototype_loss_{device_slug(device)}.csv"
    out = args.out or (None if args.smoke else default_out)
    results = []
    for p, preset_impls in select(args, impls):
        for impl in preset_impls:
            t, mib = run_one(p, impl, device, args, dtype)
            results.append((p, impl, t, mib))
            print(f"  {p.name:20} {impl:9} {t.p50 * 1e3:10.2f} ms {mib:9.1f} MiB", flush=True)
            if out is not None:  # row by row: a run cut short keeps what it measured
                append_rows(out, csv_rows(results[-1:], device, dtype))
    print(f"\nprototype loss, forward + backward, {args.dtype}, {device_name(device)}")
    print("\n".join(report(results, device, dtype)))
    if out is not None:
        print(f"appended {2 * len(results)} rows to {out}")


def csv_rows(
    results: list[tuple[Preset, str, Timing, float]], device: torch.device, dtype: torch.dtype
) -> list:
    rows = []
    for p, impl, t, mib in results:
        ns, nt, pairs = p.sizes
        shape = f"{p.name} Ns={ns} Nt={nt} K={p.k} D={DIM} P={pairs} {str(dtype)[6:]}"
        rows.append(make_row("prototype_loss", impl, shape, "fwd_bwd_time", "s", t, device))
        rows.append(
            make_row("prototype_loss", impl, shape, "peak_extra_memory", "MiB", mib, device)
        )
    return rows


if __name__ == "__main__":
    main()
