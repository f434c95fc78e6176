"""The ``camseg`` console script: ``camseg run ...`` (the pipeline) and ``camseg evaluate ...``."""

from __future__ import annotations

import argparse
import sys

from . import evaluate, pipeline


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="camseg", description="Grad-CAM heatmaps as tumour segmentations.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) the numbered notebooks for a preset",
                         description=pipeline.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pipeline.add_arguments(run)
    ev = sub.add_parser("evaluate", help="apply a finished run to new patients and score it",
                        description=evaluate.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_arguments(ev)
    args = ap.parse_args(argv)
    return pipeline.run_from_args(args) if args.command == "run" else evaluate.run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
