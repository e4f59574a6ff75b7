"""The `fastproto` command.

Examples:
    fastproto env                       # versions of python, torch, triton, timm, ffcv, DALI, GPU
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _add_env(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "env", help="print versions of python, torch, triton, timm, ffcv, DALI, CUDA"
    )

    def run(_: argparse.Namespace) -> int:
        from fastproto.env_info import print_environment

        print_environment()
        return 0

    parser.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastproto",
        description="DINO/iBOT-vMF with KoLeo-proto and a fused prototype loss.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_env(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
