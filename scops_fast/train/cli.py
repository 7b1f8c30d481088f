"""`scops-train` / `python -m scops_fast.train`: train SCOPS from a config preset or
JSON file. Under `torchrun --nproc_per_node=N -m scops_fast.train ...` it trains with
DistributedDataParallel (gloo on the CPU, nccl on GPUs)."""

from __future__ import annotations

import argparse
import pathlib
import sys

from scops_fast.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from scops_fast.train.config import (
    ConfigError,
    config_from_dict,
    load_config,
    parse_override,
    preset_names,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scops-train",
        description="Train SCOPS self-supervised co-part segmentation.",
    )
    parser.add_argument(
        "--config",
        help=f"preset name ({', '.join(preset_names())}) or path of a JSON config; "
        "optional with --resume when the checkpoint exists",
    )
    parser.add_argument(
        "--steps", type=int, help="total steps (the learning-rate schedule's horizon)"
    )
    parser.add_argument("--backend", help="loss backend: auto, reference, cpp, triton, cuda")
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in OUT even if it holds a run (without it, or --resume, such a "
        "folder is refused)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set data.batch_size=4 (value parsed as JSON)",
    )
    parser.add_argument("--no-progress", action="store_true", help="log lines, no progress bar")
    return parser


def _config(args, parser):
    overrides = dict(parse_override(text) for text in args.set)
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.backend is not None:
        overrides["loss.backend"] = args.backend
    if args.config is not None:
        return load_config(args.config, overrides)
    if args.resume and args.out:
        path = pathlib.Path(args.out) / CHECKPOINT_NAME
        if path.exists():
            cfg = config_from_dict(load_checkpoint(path)["config"], source=str(path))
            return cfg.replace(overrides) if overrides else cfg
    parser.error("--config is required (unless --resume finds OUT/checkpoint.pt)")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = _config(args, parser)
    except (ConfigError, CheckpointError, FileNotFoundError) as exc:
        print(f"scops-train: error: {exc}", file=sys.stderr)
        return 2

    from scops_fast.train import distributed
    from scops_fast.train.trainer import Trainer, TrainingInterrupted

    out = pathlib.Path(args.out or pathlib.Path("runs") / cfg.name)
    existing = out / CHECKPOINT_NAME
    if existing.exists() and not (args.resume or args.overwrite):
        print(
            f"scops-train: error: {out} already holds a run ({existing}); pass --resume to "
            f"continue it, --overwrite to start over in it, or another --out",
            file=sys.stderr,
        )
        return 2
    resume_hint = f"scops-train --out {out} --resume"
    trainer = None
    try:
        trainer = Trainer(cfg, out, resume=args.resume, progress=not args.no_progress)
        if trainer.proc.is_main:
            print(
                f"scops-train: {cfg.name}: step {trainer.step} -> {trainer.cfg.steps}, "
                f"{trainer.proc.world_size} process(es) on {trainer.device}, writing {out}",
                file=sys.stderr,
            )
        trainer.train()
    except (ConfigError, CheckpointError, FileNotFoundError, KeyError) as exc:
        print(f"scops-train: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(
            f"\nscops-train: interrupted after step {stop.step}; saved {stop.checkpoint}. "
            f"Continue with: {resume_hint}",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        saved = f"the last checkpoint is {existing}" if existing.exists() else "nothing saved"
        print(
            f"\nscops-train: interrupted; {saved}. Continue with: {resume_hint}", file=sys.stderr
        )
        return 130
    finally:
        distributed.teardown()
    if trainer.proc.is_main:
        print(summary(trainer, out), file=sys.stderr)
    return 0


def summary(trainer, out: pathlib.Path) -> str:
    """The end-of-run lines: what ran, the verdict where scored, where the report is."""
    metrics = getattr(trainer, "metrics", None) or {}
    lines = [
        f"scops-train: done: {trainer.step} steps of {trainer.cfg.name} in "
        f"{trainer.train_seconds:.0f} s of training; checkpoint {out / CHECKPOINT_NAME}"
    ]
    criteria = metrics.get("criteria")
    if criteria:
        verdict = "met" if criteria.get("passed") else "not met"
        parts = []
        if "landmark_error_ratio_vs_kmeans" in criteria:
            parts.append(
                f"landmark error {criteria['landmark_error_ratio_vs_kmeans']:.2f}x k-means's "
                f"(at most {criteria['landmark_ratio_max']})"
            )
        if "part_nmi_margin_vs_kmeans" in criteria:
            parts.append(
                f"part NMI {criteria['part_nmi_margin_vs_kmeans']:+.3f} over k-means "
                f"(at least +{criteria['nmi_margin_min']})"
            )
        lines.append(f"scops-train: criteria {verdict}: " + "; ".join(parts))
    report = out / "report.html"
    if report.exists():
        lines.append(f"scops-train: report: {report}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
