"""The five hypotheses of the study, each with a fixed decision rule applied to the runs.

Every verdict is one of SUPPORTED, NOT SUPPORTED or NOT ENOUGH DATA, computed from per-cell
means over seeds (kNN top-1 at k = 20, M at eps = 0.025). The rules:

1. Baseline collapse (regulariser none): needs >= 2 values of K. Supported when at the largest
   K the mean M / K <= 0.5 and M grows at most like K^0.25 between the smallest and largest K,
   i.e. g = log(M_max / M_min) / log(K_max / K_min) <= 0.25.
2. KoLeo-proto at lambda = 0.1 keeps the prototypes: needs >= 1 K. Supported when the mean
   M / K >= 0.95 at every K.
3. kNN with KoLeo-proto (lambda = 0.1) against the baseline: needs both at >= 2 common K.
   Supported when at every common K the mean kNN of KoLeo-proto is >= the baseline's, and its
   mean kNN at the largest K is > at the smallest K.
4. vMF + probability centring is the best of the norm x centring grid: needs that cell and at
   least one other. Supported when its mean kNN is >= every other cell's.
5. Probability centring beats Sinkhorn-Knopp and ME-MAX at small batch: at the smallest batch
   size of the centring slice, needs probability and at least one of sinkhorn / me-max.
   Supported when probability's mean kNN is > each of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastproto.study.results import Row, cell, group

SUPPORTED, REJECTED, MISSING = "SUPPORTED", "NOT SUPPORTED", "NOT ENOUGH DATA"
LAMBDA = 0.1
COLLAPSE_RATIO, GROWTH_EXPONENT, KEPT_RATIO = 0.5, 0.25, 0.95


@dataclass(frozen=True)
class Claim:
    title: str
    rule: str
    verdict: str
    evidence: list[str]


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _by_k(rows: list[Row], regulariser: str, lam: float) -> dict[int, list[Row]]:
    picked = [r for r in rows if r.regulariser == regulariser and math.isclose(r.lam, lam)]
    return {key[0]: group_rows for key, group_rows in group(picked, ("K",)).items()}


def baseline_collapse(rows: list[Row]) -> Claim:
    title = "Without KoLeo-proto, M << K and M hardly grows with K"
    rule = (
        f"mean M/K <= {COLLAPSE_RATIO} at the largest K and growth exponent "
        f"g = log(M_max/M_min)/log(K_max/K_min) <= {GROWTH_EXPONENT}"
    )
    by_k = _by_k(rows, "none", 0.0)
    if len(by_k) < 2:
        return Claim(title, rule, MISSING, [f"baseline runs at {len(by_k)} value(s) of K"])
    ks = sorted(by_k)
    m_lo, m_hi = (
        cell(by_k[ks[0]], lambda r: r.unique).mean,
        cell(by_k[ks[-1]], lambda r: r.unique).mean,
    )
    ratio = m_hi / ks[-1]
    growth = math.log(max(m_hi, 1e-12) / max(m_lo, 1e-12)) / math.log(ks[-1] / ks[0])
    ok = ratio <= COLLAPSE_RATIO and growth <= GROWTH_EXPONENT
    evidence = [f"K={k}: mean M={cell(by_k[k], lambda r: r.unique).mean:.1f}" for k in ks]
    evidence += [f"M/K at K={ks[-1]}: {ratio:.3f}", f"growth exponent g = {growth:.3f}"]
    return Claim(title, rule, SUPPORTED if ok else REJECTED, evidence)


def koleo_keeps(rows: list[Row]) -> Claim:
    title = f"With KoLeo-proto at lambda = {LAMBDA}, M >= {KEPT_RATIO} K"
    rule = f"mean M/K >= {KEPT_RATIO} at every K"
    by_k = _by_k(rows, "koleo-proto", LAMBDA)
    if not by_k:
        return Claim(title, rule, MISSING, [f"no KoLeo-proto runs at lambda = {LAMBDA}"])
    ratios = {k: cell(rs, lambda r: r.unique).mean / k for k, rs in sorted(by_k.items())}
    evidence = [f"K={k}: mean M/K = {v:.3f}" for k, v in ratios.items()]
    ok = all(v >= KEPT_RATIO for v in ratios.values())
    return Claim(title, rule, SUPPORTED if ok else REJECTED, evidence)


def koleo_knn(rows: list[Row]) -> Claim:
    title = "kNN with KoLeo-proto is at least the baseline's and grows with K"
    rule = (
        "at every common K, mean kNN(KoLeo-proto, lambda 0.1) >= mean kNN(baseline), "
        "and KoLeo-proto's mean kNN at the largest K > at the smallest K"
    )
    kp, base = _by_k(rows, "koleo-proto", LAMBDA), _by_k(rows, "none", 0.0)
    common = sorted(set(kp) & set(base))
    if len(common) < 2:
        return Claim(title, rule, MISSING, [f"both regimes present at {len(common)} K value(s)"])
    knn_kp = {k: cell(kp[k], lambda r: r.knn).mean for k in common}
    knn_base = {k: cell(base[k], lambda r: r.knn).mean for k in common}
    evidence = [
        f"K={k}: KoLeo-proto {_pct(knn_kp[k])} vs baseline {_pct(knn_base[k])}" for k in common
    ]
    ok = all(knn_kp[k] >= knn_base[k] for k in common) and knn_kp[common[-1]] > knn_kp[common[0]]
    return Claim(title, rule, SUPPORTED if ok else REJECTED, evidence)


def vmf_probability_best(rows: list[Row]) -> Claim:
    title = "vMF with probability centring is the best of the norm x centring grid"
    rule = "mean kNN of (vmf, probability) >= mean kNN of every other (norm, centring) cell"
    cells = {
        key: cell(rs, lambda r: r.knn).mean
        for key, rs in group(rows, ("norm", "centering")).items()
    }
    target = ("vmf", "probability")
    if target not in cells or len(cells) < 2:
        return Claim(
            title,
            rule,
            MISSING,
            [f"{len(cells)} cell(s); vmf/probability present: {target in cells}"],
        )
    evidence = [f"{n}/{c}: {_pct(v)}" for (n, c), v in sorted(cells.items(), key=lambda i: -i[1])]
    ok = all(cells[target] >= v for v in cells.values())
    return Claim(title, rule, SUPPORTED if ok else REJECTED, evidence)


def probability_small_batch(rows: list[Row]) -> Claim:
    title = "Probability centring beats Sinkhorn-Knopp and ME-MAX at small batch"
    rule = "at the smallest batch, mean kNN(probability) > mean kNN of sinkhorn and of me-max"
    if not rows:
        return Claim(title, rule, MISSING, ["no runs in the centring slice"])
    smallest = min(r.batch for r in rows)
    at_b = group([r for r in rows if r.batch == smallest], ("centering",))
    knn = {key[0]: cell(rs, lambda r: r.knn).mean for key, rs in at_b.items()}
    others = [c for c in ("sinkhorn", "me-max") if c in knn]
    if "probability" not in knn or not others:
        return Claim(title, rule, MISSING, [f"batch {smallest}: centrings {sorted(knn)}"])
    evidence = [f"batch {smallest}, {c}: {_pct(knn[c])}" for c in ["probability", *others]]
    ok = all(knn["probability"] > knn[c] for c in others)
    return Claim(title, rule, SUPPORTED if ok else REJECTED, evidence)
