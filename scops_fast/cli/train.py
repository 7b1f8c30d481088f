"""`scops-train` / `python -m scops_fast.train`: train SCOPS from a config preset or
JSON file. Under `torchrun --nproc_per_node=N -m scops_fast.train ...` it trains with
DistributedDataParallel (gloo on the CPU, nccl on GPUs)."""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys

from scops_fast.data.folder import RESIZE_MODES
from scops_fast.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from scops_fast.train.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_override,
    preset_names,
)
from scops_fast.train.data import DATASETS


def _resume_mode(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"expected nothing or 'auto', got {text!r}")
    return text


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
    parser.add_argument(
        "--backend",
        help="loss backend: auto, reference, cpp, triton, cuda (and cuda_emu: the CUDA kernels' "
        "code emulated on the CPU, slow, for checking them without a GPU)",
    )
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        type=_resume_mode,
        metavar="auto",
        help="continue the run in OUT (refused when OUT holds none; '--resume auto' starts it "
        "there instead, so that one command serves a job's first run and its restarts); it "
        "keeps its checkpoint's settings but for --steps (a new schedule horizon), --backend, "
        "compile, channels_last and model.activation_checkpointing, and prints what it ignored "
        "and changed",
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
    data = parser.add_argument_group(
        "data (short for --set data...: the data set's arguments are replaced, not merged)"
    )
    data.add_argument(
        "--data",
        help="data set: synthetic, celeba, cub, folder (any folder of images), or "
        "package.module:Class",
    )
    data.add_argument("--root", help="the data set's folder (celeba, cub, folder)")
    data.add_argument(
        "--saliency",
        help="folder of grey saliency maps named like the images (<stem>.png), or 'auto' (a "
        "folder: estimate them with OpenCV once, cached in ROOT/.scops_saliency/, reused while "
        "newer than the images); without either the semantic loss is not masked",
    )
    data.add_argument("--image-size", type=int, help="training image size (square)")
    data.add_argument(
        "--resize",
        choices=RESIZE_MODES,
        help="folder: how a non-square photo becomes square: squash (the default: stretched), "
        "letterbox (whole, with black bars) or crop (the central square)",
    )
    data.add_argument(
        "--batch-size",
        help="global batch (short for --set data.batch_size=N), or 'auto': the largest batch, "
        "with the least activation checkpointing, whose step fits memory_budget_gb (default: "
        "95%% of the GPU's free memory, or 80%% of the available memory on CPU); found by "
        "trial steps on CUDA, from a short memory probe on CPU, and printed",
    )
    parser.add_argument("--no-progress", action="store_true", help="log lines, no progress bar")
    parser.add_argument(
        "--print-config",
        nargs="?",
        const="text",
        choices=("text", "json"),
        help="print the resolved configuration (--config, --set and the data flags applied; "
        "the defaults without --config), each field with its meaning, default and allowed "
        "values (the same as docs/config.md), and exit without training; '--print-config "
        "json' prints it as a whole config file for --config instead",
    )
    return parser


#: What each data set is evaluated on when --data picks it: labelled test and train splits
#: of the same root, or nothing to score (a folder of images).
EVALUATION_SPLITS = {"celeba": ("test", "train"), "cub": ("test", "train")}


def data_overrides(args, cfg, set_args: dict | None = None) -> dict:
    """The --data/--root/--saliency/--image-size flags as overrides of `cfg`. The same data
    set as the config's keeps its arguments (root and saliency replaced); another one gets
    arguments of its own and an evaluation that follows it: its labelled splits, or none
    for a folder of unlabelled images."""
    out = {}
    if args.image_size is not None:
        out["data.image_size"] = args.image_size
    if args.batch_size not in (None, "auto"):
        if not args.batch_size.isdigit() or int(args.batch_size) < 1:
            raise ConfigError(
                f"--batch-size: expected a positive integer or 'auto', got {args.batch_size!r}"
            )
        out["data.batch_size"] = int(args.batch_size)
    kind = args.data or cfg.data.dataset
    if args.saliency == "auto" and DATASETS.get(kind, kind) != DATASETS["folder"]:
        # Other data sets would look for a folder named "auto" and find no maps.
        raise ConfigError(
            f"--saliency auto: only for --data folder (this run's data set is {kind}); write "
            "maps with scops-saliency IMAGES --out DIR and pass --saliency DIR"
        )
    data_args = {} if kind != cfg.data.dataset else dict(cfg.data.args)
    data_args.update(set_args or {})  # --set data.args.x=... holds for the new data set too
    if args.root is not None:
        data_args["root"] = args.root
    if args.saliency is not None:
        data_args["saliency_dir"] = args.saliency
    if args.resize is not None:
        if DATASETS.get(kind, kind) != DATASETS["folder"]:
            raise ConfigError(
                f"--resize: only for --data folder (this run's data set is {kind}, which "
                "crops as its protocol says)"
            )
        data_args["resize"] = args.resize
    if args.data is None or kind == cfg.data.dataset:
        if args.root is not None or args.saliency is not None or args.resize is not None:
            out["data.args"] = data_args
        if args.saliency is not None:
            out["features.saliency"] = True
        return out
    out.update({"data.dataset": kind, "data.args": data_args})
    if kind == "synthetic":
        return out
    out["features.saliency"] = args.saliency is not None
    if kind in EVALUATION_SPLITS:
        test, train = EVALUATION_SPLITS[kind]
        common = {"root": args.root} if args.root else {}
        out.update(
            {
                "data.args": {**data_args, "split": train},
                "evaluation.enabled": True,
                "evaluation.test_dataset": kind,
                "evaluation.test_args": {**common, "split": test},
                "evaluation.train_dataset": kind,
                "evaluation.train_args": {**common, "split": train},
            }
        )
    else:
        out["evaluation.enabled"] = False  # no labels: nothing to score, pictures only
    return out


def _config(args, parser):
    overrides = dict(parse_override(text) for text in args.set)
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.backend is not None:
        overrides["loss.backend"] = args.backend
    if args.config is not None:
        cfg = load_config(args.config, overrides)
    elif args.print_config:
        cfg = Config().replace(overrides) if overrides else Config()
    elif args.resume and args.out and (pathlib.Path(args.out) / CHECKPOINT_NAME).exists():
        path = pathlib.Path(args.out) / CHECKPOINT_NAME
        cfg = config_from_dict(load_checkpoint(path)["config"], source=str(path))
        cfg = cfg.replace(overrides) if overrides else cfg
    else:
        parser.error("--config is required (unless --resume finds OUT/checkpoint.pt)")
    prefix = "data.args."
    set_args = {k[len(prefix) :]: v for k, v in overrides.items() if k.startswith(prefix)}
    flags = data_overrides(args, cfg, set_args)
    return cfg.replace(flags) if flags else cfg


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = _config(args, parser)
    except (ConfigError, CheckpointError, FileNotFoundError) as exc:
        print(f"scops-train: error: {exc}", file=sys.stderr)
        return 2
    if args.print_config == "json":
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if args.print_config:
        from scops_fast.train.config_reference import annotated

        print(annotated(cfg, f"--config {args.config}" if args.config else "the defaults"), end="")
        return 0

    from scops_fast.train import distributed
    from scops_fast.train.stopping import exit_status
    from scops_fast.train.trainer import Trainer, TrainingDiverged, TrainingInterrupted

    out = pathlib.Path(args.out or pathlib.Path("runs") / cfg.name)
    if out.exists() and not out.is_dir():
        print(f"scops-train: error: --out: {out} is a file; name a folder", file=sys.stderr)
        return 2
    existing = out / CHECKPOINT_NAME
    if args.resume == "auto":
        args.resume = existing.exists()
    if args.resume and args.overwrite:
        print("scops-train: error: --resume and --overwrite: choose one", file=sys.stderr)
        return 2
    if args.resume and not existing.exists():
        # A mistyped --out would otherwise start a new run at step 0 without a word.
        print(
            f"scops-train: error: --resume: {out} holds no run ({existing} does not exist); "
            "check --out, or drop --resume to start a new run there",
            file=sys.stderr,
        )
        return 2
    if existing.exists() and not (args.resume or args.overwrite):
        print(
            f"scops-train: error: {out} already holds a run ({existing}); pass --resume to "
            f"continue it, --overwrite to start over in it, or another --out",
            file=sys.stderr,
        )
        return 2
    if args.batch_size == "auto":
        try:
            cfg = _auto_batch(cfg, resuming=args.resume and existing.exists())
        except (ConfigError, RuntimeError) as exc:
            print(f"scops-train: error: {exc}", file=sys.stderr)
            return 2
    resume_hint = f"scops-train --out {out} --resume"
    trainer = None
    try:
        trainer = Trainer(cfg, out, resume=args.resume, progress=not args.no_progress)
        if trainer.proc.is_main and trainer.resume_note:
            print(f"scops-train: {trainer.resume_note}", file=sys.stderr)
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
    except TrainingDiverged as diverged:
        if trainer.proc.is_main:
            print(f"scops-train: error: {diverged}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:
        if trainer.proc.is_main:  # the one that saved it
            with contextlib.suppress(OSError):  # a closed terminal or pipe: it is saved anyway
                print(
                    f"\nscops-train: stopped by {stop.signal.name} after step {stop.step}; "
                    f"saved {stop.checkpoint}. Continue with: {resume_hint}",
                    file=sys.stderr,
                )
        # No rank exits before rank 0 has said so: torchrun's agent sends SIGTERM to the
        # others as soon as one has exited, and its default action would cut the line short.
        distributed.barrier(trainer.proc, trainer.stop_group)
        return exit_status(stop.signal)
    except KeyboardInterrupt:
        if existing.exists():
            again = f"the last checkpoint is {existing}. Continue with: {resume_hint}"
        else:
            again = "nothing saved; the same command starts again"
        print(f"\nscops-train: interrupted; {again}", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
    if trainer.proc.is_main:
        with contextlib.suppress(OSError):  # a closed terminal or pipe: the run is saved
            print(summary(trainer, out), file=sys.stderr)
    return 0


def _auto_batch(cfg, *, resuming: bool):
    """cfg with the batch size (and activation checkpointing) --batch-size auto chose."""
    import os

    import torch

    from scops_fast.train import autobatch
    from scops_fast.train.data import build_dataset

    if resuming:
        print("scops-train: --batch-size auto: a resumed run keeps its batch", file=sys.stderr)
        return cfg
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return _auto_batch_ranks(cfg, world)
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    available = len(build_dataset(cfg.data)) // cfg.data.accumulate
    with _probing(cfg, device) as progress:
        chosen, choice = autobatch.resolve(
            cfg, device, cfg.memory_budget_gb, min(autobatch.MAX_BATCH, available), progress
        )
    print(f"scops-train: {choice.line(cfg.data.image_size)}", file=sys.stderr)
    return chosen


@contextlib.contextmanager
def _probing(cfg, device: str):
    """Says what the probe does before its minutes of silence, and counts its steps on a
    terminal: yields the progress callback for autobatch.resolve."""
    from scops_fast.terminal import progress_bar
    from scops_fast.train import autobatch

    how = (
        "trial steps on the GPU"
        if device == "cuda"
        else f"probe steps at {autobatch.probe_size(cfg)} px in child processes"
    )
    print(
        f"scops-train: batch size auto: measuring the memory of a training step at "
        f"{cfg.data.image_size} px for each activation checkpointing level "
        f"({', '.join(autobatch.LEVELS)}): {how}",
        file=sys.stderr,
    )
    bar = progress_bar(None if device == "cuda" else len(autobatch.LEVELS), unit="probe")

    def progress(what: str) -> None:
        if bar is not None:
            bar.set_postfix_str(what, refresh=False)
            bar.update()

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()


def _auto_batch_ranks(cfg, world: int):
    """--batch-size auto under torchrun: rank 0 alone finds the largest batch per process
    (on the CPU for its share of the memory budget, which the processes of one machine
    split: LOCAL_WORLD_SIZE of them), every rank takes it, and the global batch is that
    times the processes. The process group is joined here; the trainer reuses it.
    Rank 0's probe steps run as a process of their own (no collectives); the others wait
    for the answer on a gloo group with a timeout of distributed.ONE_RANK_WAIT, not the
    default group's (nccl's is ten minutes, which a probe of four levels at a large size can
    outlast)."""
    import os

    import torch
    import torch.distributed as dist

    from scops_fast.train import autobatch, distributed
    from scops_fast.train.data import build_dataset

    proc = distributed.setup(cfg.device)
    waiting = dist.new_group(backend="gloo", timeout=distributed.ONE_RANK_WAIT)
    device = proc.device.type
    budget = cfg.memory_budget_gb or autobatch.default_budget_gb(device)
    if device == "cpu":
        budget /= int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    decided = torch.zeros(2, dtype=torch.long)  # batch per process (-1: none), level
    failure = None
    if proc.is_main:
        try:
            available = len(build_dataset(cfg.data)) // cfg.data.accumulate // world
            with _probing(cfg, device) as progress:
                _, choice = autobatch.resolve(
                    cfg, device, budget, min(autobatch.MAX_BATCH, max(available, 1)), progress
                )
            decided[0] = choice.batch_size
            decided[1] = autobatch.LEVELS.index(choice.activation_checkpointing)
            print(
                f"scops-train: {choice.line(cfg.data.image_size)}; per process, "
                f"{world} processes: global batch {choice.batch_size * world}",
                file=sys.stderr,
            )
        except Exception as exc:  # the other ranks hear of it, then rank 0 raises it
            decided[0], failure = -1, exc
    dist.broadcast(decided, 0, group=waiting)
    dist.destroy_process_group(waiting)
    batch, level = (int(v) for v in decided)
    if failure is not None:
        raise failure
    if batch < 1:
        raise ConfigError("--batch-size auto: rank 0 found no batch (its error says why)")
    return cfg.replace(
        {
            "data.batch_size": batch * world,
            "model.activation_checkpointing": autobatch.LEVELS[level],
        }
    )


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
    elif not trainer.cfg.evaluation.enabled:
        why = (
            "a folder of images has no labels"
            if trainer.cfg.data.dataset == "folder"
            else "evaluation.enabled is false"
        )
        lines.append(
            f"scops-train: nothing to score: no evaluation was configured ({why}); the report "
            "shows the parts found on the training images"
        )
    report = out / "report.html"
    if report.exists():
        lines.append(f"scops-train: report: {report}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
