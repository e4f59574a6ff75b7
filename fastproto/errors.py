"""Errors that mean "the run cannot go on as asked", reported by `fastproto` as one line.

Input and file problems are ValueError subclasses (CheckpointError among them); a run whose
numbers went NaN or infinite raises NonFiniteError. The command line catches these, OSError
(disk full, read-only directory) and allocator failures, and nothing else, so a genuine bug
still shows its traceback.
"""

from __future__ import annotations


class NonFiniteError(FloatingPointError):
    """The loss, the gradients or the state went NaN or infinite; nothing of it was kept."""
