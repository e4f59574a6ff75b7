"""`python -m fastproto ...` (what `torchrun -m fastproto train ...` runs)."""

from fastproto.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
