"""`data_prep`: convert image datasets to FFCV (.beton) or DALI (webdataset tar + index) files.

Examples:
    data_prep fashion-mnist --to-ffcv data/fmnist-ffcv --limit 1000     # quick CPU demo data
    data_prep fashion-mnist --to-dali data/fmnist-dali
    data_prep imagenet /data/imagenet --to-ffcv data/in1k-ffcv --workers 16 --max-resolution 512
    data_prep imagenet /data/imagenet --to-dali data/in1k-dali --shard-size 10000 --skip-bad
    data_prep folder ./photos --to-ffcv data/photos                      # photos/<class>/*.jpg
    data_prep verify data/in1k-dali

Exit status: 0 on success (also when OUT already holds this same conversion), 1 when verify
finds a difference, 2 on a usage or input error (the message says what to do), e.g. an OUT
holding another conversion or files data_prep did not write (pass --overwrite, or choose
another OUT) or a class folder holding a sub-folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .fashion_mnist import DEFAULT_SOURCE
from .prepare import prepare_fashion_mnist, prepare_folder, prepare_imagenet
from .sources import DataPrepError
from .verify import verify_output


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--to-ffcv", type=Path, metavar="OUT", help="write OUT/<split>.beton")
    dest.add_argument(
        "--to-dali", type=Path, metavar="OUT", help="write OUT/<split>/shard-NNNNNN.{tar,idx}"
    )
    p.add_argument(
        "--max-resolution", type=int, default=512, help="cap on the short side, pixels (512)"
    )
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1-100 (90)")
    p.add_argument("--shard-size", type=int, default=10000, help="images per DALI shard (10000)")
    p.add_argument(
        "--workers", type=int, default=1, help="decode processes; output does not depend on it"
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="leave out unreadable images (listed in manifest)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what data_prep wrote in OUT (other files stay)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data_prep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imagenet = sub.add_parser("imagenet", help="SRC/train/<class>/* and/or SRC/val/<class>/*")
    imagenet.add_argument("src", type=Path, metavar="SRC", help="ImageNet-style root folder")
    _add_output_flags(imagenet)
    folder = sub.add_parser("folder", help="SRC/<class>/* as the split 'train'")
    folder.add_argument("src", type=Path, metavar="SRC", help="folder of class folders")
    _add_output_flags(folder)
    fmnist = sub.add_parser("fashion-mnist", help="Debian's dataset-fashion-mnist files")
    fmnist.add_argument(
        "--source", type=Path, default=DEFAULT_SOURCE, help=f"IDX folder ({DEFAULT_SOURCE})"
    )
    fmnist.add_argument("--limit", type=int, default=None, help="first N images of each split")
    _add_output_flags(fmnist)
    verify = sub.add_parser("verify", help="re-read OUT and compare it with its manifest.json")
    verify.add_argument("out", type=Path, metavar="OUT", help="a data_prep output folder")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "verify":
        problems = verify_output(args.out)
        for line in problems:
            print(f"verify: {line}", file=sys.stderr)
        if not problems:
            print(f"verify: {args.out} matches its manifest.json")
        return 1 if problems else 0
    fmt, out = ("ffcv", args.to_ffcv) if args.to_ffcv is not None else ("dali", args.to_dali)
    options = {
        "max_resolution": args.max_resolution,
        "jpeg_quality": args.jpeg_quality,
        "shard_size": args.shard_size,
        "workers": args.workers,
        "skip_bad": args.skip_bad,
        "overwrite": args.overwrite,
    }
    if args.command == "imagenet":
        prepare_imagenet(args.src, out, fmt, **options)
    elif args.command == "folder":
        prepare_folder(args.src, out, fmt, **options)
    else:
        prepare_fashion_mnist(out, fmt, limit=args.limit, source=args.source, **options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except DataPrepError as exc:
        print(f"data_prep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
