"""The `fastproto` command.

Examples:
    fastproto env                       # versions of python, torch, triton, timm, ffcv, DALI, GPU
    fastproto demo                      # partial prototype collapse, with and without
                                        # KoLeo-proto: Fashion-MNIST, ~12 min on 2 CPU cores
    fastproto train                     # one run of the demo recipe (KoLeo-proto on)

    # a tiny CPU run on your own data (converted with `data_prep`), then resume it by rerunning
    fastproto train --config demo --data data/fmnist --epochs 1 --batch-size 64 --K 256 \
        --out runs/tiny run.max_steps=20 run.device=cpu
    fastproto train --config demo --data data/fmnist --out runs/tiny --resume
    # continue from a named checkpoint (say, one before the loss diverged) into a new directory
    fastproto train --config demo --data data/fmnist --out runs/tiny-lr2 optim.lr=2e-3 \
        --resume-from runs/tiny/checkpoint-000000010.pt

    # iBOT-vMF + KoLeo-proto, ViT-S/16 on ImageNet (paper 1, Table 6), 8 GPUs, K = 65536
    torchrun --nproc_per_node 8 -m fastproto train --config vit_small_ibot \
        --data data/in1k-ffcv --K 65536 --out runs/ibot-k64k optim.lr=2e-3

    fastproto eval knn --checkpoint runs/tiny/checkpoint-000000020.pt --data data/fmnist
    fastproto prototypes runs/tiny/checkpoint-000000020.pt
"""

from __future__ import annotations

import argparse
import os
import sys
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


# flag -> dotted config key; flags are applied after the recipe, `key=value` items after them.
TRAIN_FLAGS: dict[str, tuple[str, type, str]] = {
    "--data": ("data.path", str, "dataset directory (omit to run the Fashion-MNIST demo)"),
    "--backend": ("data.backend", str, "loader backend: ffcv, dali or folder"),
    "--resize": ("data.resize", str, "crop filter: antialias, or fast (bilinear below 2x shrink)"),
    "--arch": ("model.arch", str, "backbone, e.g. vit_small_patch16_224, vit_pico_patch4_28"),
    "--method": ("method.name", str, "dino (CLS loss only) or ibot (adds the masked patch loss)"),
    "--K": ("head.num_prototypes", int, "number of prototypes K"),
    "--norm": ("head.norm", str, "prototype normalisation: vmf, l2 or free"),
    "--centering": ("method.centering", str, "probability, logit, sinkhorn or none"),
    "--koleo-proto": ("method.koleo_proto", float, "KoLeo-proto weight lambda (0 turns it off)"),
    "--koleo-data": ("method.koleo_data", float, "KoLeo on the batch CLS tokens, weight"),
    "--me-max": ("method.me_max", float, "ME-MAX penalty weight (use with --centering none)"),
    "--epochs": ("optim.epochs", int, "number of epochs"),
    "--batch-size": ("optim.batch_size", int, "global batch size over all processes"),
    "--out": ("run.out", str, "run directory (checkpoints, metrics.jsonl, config.toml)"),
    "--loss-impl": ("method.loss_impl", str, "prototype loss: auto, triton, chunked, reference"),
}


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The flags given on the command line as `key=value` overrides, then the raw items."""
    items = []
    for flag, (key, _, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            items.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    return items + list(args.overrides)


def _stopped(signal_name: str, step: int, run_dir: object) -> int:
    """Say that a run stopped on a signal and where its checkpoint is; -> 128 + signal number."""
    from pathlib import Path

    from fastproto.train.checkpoint import latest_checkpoint
    from fastproto.train.signals import stopped_message

    line, status = stopped_message(signal_name, step, latest_checkpoint(Path(str(run_dir))))
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)
    return status


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="train DINO/iBOT-vMF (without --data: the Fashion-MNIST demo)"
    )
    parser.add_argument(
        "--config", help="recipe TOML (a path, or a bundled name: demo, vit_small_ibot)"
    )
    for flag, (_, kind, text) in TRAIN_FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, help=text)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="require a checkpoint in --out and continue from it (rerunning also resumes)",
    )
    parser.add_argument(
        "--resume-from",
        metavar="PATH",
        help="continue from this checkpoint-*.pt (e.g. one before a divergence) into --out",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-3"
    )

    def run(args: argparse.Namespace) -> int:
        from fastproto.config import load_config

        overrides = train_overrides(args)
        demo = args.data is None and not any(o.startswith("data.path=") for o in overrides)
        config = load_config(args.config or ("demo" if demo else None), overrides)
        if demo:
            from fastproto.train.demo import run_demo

            summary = run_demo(config, args.resume, resume_from=args.resume_from)
            if "stopped_by_signal" in summary:
                return _stopped(summary["stopped_by_signal"], summary["step"], config.run.out)
            return 0
        from fastproto.train.loop import train

        result = train(config, args.resume, args.resume_from)
        if result.stopped_by_signal:
            return _stopped(result.signal_name, result.step, result.run_dir)
        if os.environ.get("RANK", "0") == "0":
            print(f"step {result.step}, epoch {result.epoch}: run directory {result.run_dir}")
        return 0

    parser.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="partial prototype collapse on Fashion-MNIST: a baseline and a KoLeo-proto run "
        "side by side (2 CPU cores, ~12 min)",
    )
    parser.add_argument("--out", default="runs/demo", help="directory of both arms' runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of both arms")
    parser.add_argument(
        "--config", default="demo", help="recipe both arms train (a path or a bundled name)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both arms"
    )

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from fastproto.train.two_arms import run_two_arm_demo

        summary = run_two_arm_demo(Path(args.out), args.seed, list(args.overrides), args.config)
        if "exit" in summary:
            code = int(summary["exit"])
            stopped = "stopped" if code in (130, 143) else "failed"
            print(
                f"an arm {stopped} (exit {code}); logs: {', '.join(summary['logs'])}. Rerun the "
                "same command to resume both arms from their checkpoints.",
                file=sys.stderr,
            )
            return code
        return 0

    parser.set_defaults(func=run)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="kNN, linear probe or few-shot on frozen teacher features")
    parser.add_argument("kind", choices=("knn", "linear", "fewshot"), help="evaluation protocol")
    parser.add_argument("--checkpoint", required=True, help="checkpoint-*.pt file of a run")
    parser.add_argument("--data", required=True, help="dataset directory with train and val")
    parser.add_argument("--backend", help="loader backend (default: the run's)")
    parser.add_argument("--out", help="JSON file to write (default: next to the checkpoint)")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        import torch

        from fastproto.train.reports import describe_result, evaluate_checkpoint, write_json

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ckpt = Path(args.checkpoint)
        result = evaluate_checkpoint(args.kind, ckpt, args.data, args.backend, device)
        out = Path(args.out) if args.out else ckpt.with_name(f"{ckpt.stem}.eval-{args.kind}.json")
        write_json(result, out)
        print(describe_result(args.kind, result["result"]))
        print(f"written to {out}")
        return 0

    parser.set_defaults(func=run)


def _add_prototypes(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("prototypes", help="unique prototypes M, redundancy, PNG plots")
    parser.add_argument("checkpoint", help="checkpoint-*.pt file of a run")
    parser.add_argument("--eps", type=float, default=0.025, help="cosine-distance threshold")
    parser.add_argument("--out", help="directory for the JSON and PNGs (default: the run's)")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from fastproto.train.reports import plot_report, prototype_report, write_json

        ckpt = Path(args.checkpoint)
        report = prototype_report(ckpt, args.eps)
        out_dir = Path(args.out) if args.out else ckpt.parent / f"{ckpt.stem}.prototypes"
        write_json(report, out_dir / "prototypes.json")
        plots = plot_report(report, out_dir)
        for name in ("cls", "patch"):
            if name in report:
                h = report[name]
                print(
                    f"{name}: M = {h['unique']} unique of K = {h['num_prototypes']} at eps "
                    f"{args.eps}; largest duplicate set {h['largest_duplicate_set']}"
                )
        print(f"written to {out_dir} ({len(plots)} plots)")
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
    _add_train(sub)
    _add_demo(sub)
    _add_eval(sub)
    _add_prototypes(sub)
    from fastproto.study.commands import add_study_commands

    add_study_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand. Bad input or files (ValueError), a run gone NaN (FloatingPointError),
    disk or permission trouble (OSError) and out-of-memory print one line and exit 2; set
    FASTPROTO_DEBUG=1 to see the traceback instead."""
    parser = build_parser()
    # key=value items may come anywhere after `train`, also after flags (argparse alone would
    # only take them in one run), so leftovers that look like key=value join the overrides.
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray or (extra and args.command not in ("train", "demo")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args))
    except (ValueError, FloatingPointError, OSError, MemoryError, RuntimeError) as err:
        # bad input, bad files, a diverged run, disk/permission trouble, out of memory: one
        # line; any other RuntimeError is a bug and keeps its traceback (so does FASTPROTO_DEBUG=1)
        from fastproto.errors import is_allocation_failure, user_message

        if os.environ.get("FASTPROTO_DEBUG") or (
            isinstance(err, RuntimeError) and not is_allocation_failure(err)
        ):
            raise
        parser.exit(2, f"fastproto {args.command}: error: {user_message(err)}\n")
