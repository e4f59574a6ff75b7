"""Peak host memory of the loss: the chunked path must not grow like [N, K].

Each implementation runs forward + backward in its own fresh Python process at DINO CLS sizes
(Ns = 768, Nt = 128, K = 65536, D = 256, float32). Its extra memory is the peak resident set
size (VmHWM, reset after allocating the inputs) during the step minus the resident size then.
The reference holds several [Ns, K] float32 tensors (200 MB each); the chunked path holds
[Ns, block] tiles and the parameter-sized gradients, so its extra memory must be under a fifth
of the reference's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, resource, torch
from fastproto.kernels import prototype_cross_entropy
torch.manual_seed(0)
torch.set_num_threads(2)
ns, nt, k, d, p = 768, 128, 65536, 256, 2
unit = torch.nn.functional.normalize
student = unit(torch.randn(ns, d), dim=1).requires_grad_()
teacher = unit(torch.randn(nt, d), dim=1)
student_protos = (unit(torch.randn(k, d), dim=1) * 2.0).requires_grad_()
teacher_protos = unit(torch.randn(k, d), dim=1) * 2.0
targets = torch.randint(-1, nt, (ns, p))
weights = torch.rand(ns, p)
center = torch.zeros(k)
def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:  # reset the peak, so that the imports' transient peak cannot hide the step's
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
before = peak_kib()
loss = prototype_cross_entropy(student, teacher, student_protos, teacher_protos, targets,
                               weights, center, 0.1, 0.04, True, impl=IMPL).loss
loss.backward()
after = peak_kib()
print(json.dumps({"extra_kib": after - before, "loss": float(loss)}))
"""


def _extra_memory(impl: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("IMPL", repr(impl))],
        # a fixed mmap threshold: freed tiles go back to the system instead of fragmenting the
        # heap, so peak RSS measures live memory (see bench/prototype_loss.py)
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status (Linux)")
def test_chunked_peak_memory_is_a_fraction_of_reference() -> None:
    reference = _extra_memory("reference")
    chunked = _extra_memory("chunked")
    # same computation: the two losses agree, so the cheaper run did the whole job
    assert abs(chunked["loss"] - reference["loss"]) <= 1e-3 * abs(reference["loss"])
    assert reference["extra_kib"] > 600 * 1024, reference  # the [Ns, K] tensors were really made
    assert chunked["extra_kib"] < reference["extra_kib"] / 5, (chunked, reference)
