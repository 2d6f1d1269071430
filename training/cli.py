"""`intellioptics` command line (also `python -m training`).

    intellioptics train --detector NAME --from-export FILE.tar.gz --out DIR
                        [--config OPTIONS.json|yaml] [--epochs N] [--patience N] [--device auto|cpu|cuda]
                        [--threads N] [--seed N] [--pretrained CHECKPOINT]
                        [--production-bundle DIR] [--parent-version VERSION] [--quiet]

Trains offline from a dataset export, exactly as the training service does, and writes
DIR/bundle (the verified bundle), DIR/reports (plots and metrics.json) and DIR/checkpoint.pt.
Progress goes to stderr as plain text; the summary goes to stdout as JSON.
Exit status: 0 done, 2 the data, options or export were unusable, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from training.from_export import TrainingProgress

BAR_WIDTH = 20


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressPrinter:
    """One line per stage change and per epoch, e.g.

    [train] epoch  3/20 [###-----------------] loss 0.2345 acc 0.9310 | val 0.1876 / 0.9450 | lr 3.2e-03 | ETA 1m12s
    """

    def __init__(self, stream: TextIO, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet

    def __call__(self, p: TrainingProgress) -> None:
        if self.quiet and p.stage != "done":
            return
        if p.stage == "train" and p.epoch and p.epochs:
            filled = round(BAR_WIDTH * p.epoch / p.epochs)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            line = (
                f"[train] epoch {p.epoch:>{len(str(p.epochs))}}/{p.epochs} [{bar}] "
                f"loss {p.train_loss:.4f} acc {p.train_accuracy:.4f} | "
                f"val {p.val_loss:.4f} / {p.val_accuracy:.4f} | lr {p.learning_rate:.1e} | "
                f"{p.elapsed_s:.0f}s, ETA {_eta(p.eta_s)}"
            )
        else:
            line = f"[{p.stage}] {p.message}"
        print(line, file=self.stream, flush=True)


def _load_options(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of training options")
    return data


def _train(args: argparse.Namespace) -> int:
    # Sleeping (not spinning) OpenMP workers: on a shared machine, spinning threads were several
    # times slower than one. Must be set before torch is imported; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pydantic import ValidationError

    from training.dataset_export import ExportError, read_export
    from training.from_export import TrainingError, TrainingOptions, train_from_export

    printer = ProgressPrinter(sys.stderr, args.quiet)
    try:
        raw = _load_options(args.config)
        overrides = {
            "epochs": args.epochs,
            "patience": args.patience,
            "device": args.device,
            "threads": args.threads,
            "seed": args.seed,
            "pretrained_checkpoint": str(args.pretrained) if args.pretrained else None,
        }
        raw.update({k: v for k, v in overrides.items() if v is not None})
        options = TrainingOptions.model_validate(raw)
        t0 = time.perf_counter()
        export = read_export(args.from_export)
        det = export.detector
        if args.detector not in (det.name, det.id):
            print(
                f"error: {args.from_export} is an export of detector {det.name!r} ({det.id}), not {args.detector!r}",
                file=sys.stderr,
            )
            return 2
        printer_msg = f"[prepare] read {len(export.manifest.items)} items in {time.perf_counter() - t0:.1f}s"
        if not args.quiet:
            print(printer_msg, file=sys.stderr, flush=True)
        outcome = train_from_export(
            export,
            args.out,
            options,
            production_bundle=args.production_bundle,
            parent_version=args.parent_version,
            progress=printer,
        )
    except (ExportError, TrainingError, ValidationError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(outcome.summary(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intellioptics", description="IntelliOptics command line tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train a detector offline from a dataset export",
        description="Train a candidate bundle from a dataset export (tar.gz), with reports and a checkpoint.",
    )
    train.add_argument("--detector", required=True, help="detector name (or id) the export must belong to")
    train.add_argument(
        "--from-export", required=True, type=Path, metavar="FILE", help="dataset export tar.gz"
    )
    train.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="writes DIR/bundle, DIR/reports"
    )
    train.add_argument("--config", type=Path, help="training options as JSON or YAML (see TrainingOptions)")
    train.add_argument("--epochs", type=int, help="most epochs to run")
    train.add_argument("--patience", type=int, help="stop after this many epochs without improvement")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: CUDA when available")
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: all usable cores)")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--pretrained", type=Path, metavar="CHECKPOINT", help="local weights to start from")
    train.add_argument(
        "--production-bundle", type=Path, metavar="DIR", help="current production bundle to compare"
    )
    train.add_argument(
        "--parent-version", help="version this one succeeds (lineage), when no bundle is given"
    )
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    train.set_defaults(handler=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
