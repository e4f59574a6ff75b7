"""The prototype-scaling study: `fastproto sweep` runs a grid, `fastproto report` summarises it."""

from fastproto.study.grid import Grid, RunSpec, load_grid, parse_grid

__all__ = ["Grid", "RunSpec", "load_grid", "parse_grid"]
