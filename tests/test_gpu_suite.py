"""bench/gpu_suite.sh fits one lent-GPU call: its step budgets, as run and as written in its
header, add up to at most 420 s with the kill grace of every step."""

from __future__ import annotations

import re
from pathlib import Path

SUITE = Path(__file__).resolve().parent.parent / "bench" / "gpu_suite.sh"
CALL_LIMIT_S = 420
KILL_GRACE_S = 5  # timeout --kill-after per step
SUMMARY_S = 5  # summary lines and CSV copies, as the header allows


def test_suite_budgets_fit_one_call_and_match_its_header() -> None:
    text = SUITE.read_text()
    run = {name: int(s) for name, s in re.findall(r"^\s*(?:if ! )?step (\w+) (\d+) ", text, re.M)}
    written = {n: int(s) for n, s in re.findall(r"^#   (\w+) +(\d+) s\b", text, re.M)}
    total = written.pop("total")
    assert run == written, (run, written)
    assert {"preflight", "install", "headline", "memory", "pytest_gpu"} <= set(run)
    spent = sum(run.values()) + KILL_GRACE_S * len(run) + SUMMARY_S
    assert spent == total <= CALL_LIMIT_S, (spent, total)
    # the headline figures come first after the set-up (the link tree only when needed)
    assert list(run)[: list(run).index("headline")] == ["preflight", "install", "link_tree"]
