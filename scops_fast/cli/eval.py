"""`scops-eval` / `python -m scops_fast.cli.eval`: score a trained checkpoint and the two baselines
(one part everywhere; k-means on foreground pixel coordinates) on a data set, as JSON.

    scops-eval --checkpoint runs/demo/checkpoint.pt           # the data set it trained on
    scops-eval --checkpoint runs/demo --data synthetic --size 128 --n 500 --out eval128.json
    scops-eval --checkpoint runs/celeba-k8 --data celeba --root data/celeba
    scops-eval --checkpoint RUN --data cub --root data/cub
    scops-eval --checkpoint RUN --data folder --root photos/ --out eval/cats.json  # no labels
    scops-eval --checkpoint model_100000.pth --data celeba --root data/CelebA  # original snapshot

The landmark regressor (SPEC section 9) and the k-means centres are fitted on the train split
(synthetic: `--train-n` items of seed `--train-seed`; CelebA: the MAFL training list; CUB: the
train split) and everything is scored on the test split. The network sees every image resized
to the size it was trained at (`--net-size` to change, 0 for the image's own size); its part
maps come back at the image's size.

`--checkpoint` also takes a snapshot of the original SCOPS trainer (`model_<step>.pth`, its
network's state dict: loaded with `scops_fast.models.load_original`, K and depth read from it).
`--protocol original` reads the data as the original's evaluate_celebAWild.py does: the MAFL
lists filtered to faces covering at least 0.3 of the image, each whole image resized to 256x256
with OpenCV, integer landmarks (the default for an original snapshot); `ours` is the loader's
default (a square crop around the face box).

A data set without labels (a folder of images) cannot be scored: scops-eval says so in one
line on stderr, writes `"scored": false` and `"criteria": null` instead of numbers, and draws
the parts it finds on a sample of the images (`--pictures-n`, spread over the folder) as a
labelled sheet (`viz.part_grid`). It goes to `--pictures`, by default next to `--out`
(`cats.json` -> `cats_parts.png`) or, without `--out`, beside the checkpoint
(`eval_parts.png`). On labelled data the sheet is drawn only when `--pictures` asks for it,
with the true parts in a row of their own where the data set has them.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from scops_fast.cli.arguments import at_least, resolve_device
from scops_fast.data.imagefiles import is_inside
from scops_fast.eval.compare import evaluate_with_baselines
from scops_fast.eval.evaluate import item_count
from scops_fast.metrics_file import strict_json

DATA_KINDS = ("synthetic", "celeba", "cub", "folder")
PROTOCOLS = ("ours", "original")
#: CelebAWild arguments of the original's evaluation data.
ORIGINAL_CELEBA = {"crop": None, "min_face_area": 0.3, "reader": "opencv"}
#: Item keys that hold something to score against; a data set without any is not scored.
LABEL_KEYS = ("landmarks", "parts", "fg")
#: Test / train splits of the real data sets' loaders.
SPLITS = {"celeba": ("test", "train"), "cub": ("test", "train"), "folder": (None, None)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scops-eval",
        description="Evaluate a SCOPS checkpoint against the one-part and k-means baselines "
        "(landmark regression error, keypoint and dense part NMI/ARI, foreground IoU).",
    )
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint.pt, or a run directory holding one"
    )
    p.add_argument(
        "--data",
        help="synthetic, celeba, cub or folder; KIND:ROOT is short for --data KIND --root ROOT. "
        "Default: the data set the run trained on (its kind and root)",
    )
    p.add_argument("--root", help="data root of celeba / cub / folder")
    p.add_argument(
        "--size",
        type=at_least(8),
        help="image size the data set is built at (default: the checkpoint's training size)",
    )
    p.add_argument("--n", type=at_least(1), default=300, help="synthetic: test items (default 300)")
    p.add_argument("--seed", type=int, default=2, help="synthetic: test seed (default 2)")
    p.add_argument(
        "--train-n",
        type=at_least(1, " (--no-regression: no train split)"),
        default=500,
        help="synthetic: train items (default 500)",
    )
    p.add_argument("--train-seed", type=int, default=1, help="synthetic: train seed (default 1)")
    p.add_argument("--split", help="celeba / cub: test split (default test)")
    p.add_argument("--train-split", help="celeba / cub: train split (default train)")
    p.add_argument(
        "--no-regression",
        action="store_true",
        help="no train split: skip the landmark regression (k-means fitted on the test split)",
    )
    p.add_argument("--saliency-dir", help="celeba / cub / folder: saliency maps directory")
    p.add_argument(
        "--cub-cache",
        help="cub with --protocol original: CMR's cub cache folder (data/<split>_cub_cleaned.mat)",
    )
    p.add_argument(
        "--cub-subset",
        type=int,
        choices=(1, 2, 3),
        help="cub with --protocol original: score one of SCOPS's single-class subsets (classes "
        "001, 002, 003); the regression is fitted on the three classes' train split",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="celeba: 'original' reads the data as the original's evaluation (whole image resized, "
        "face-area filter 0.3, OpenCV); 'ours' crops around the face box. Default: original for "
        "an original snapshot, else ours",
    )
    p.add_argument(
        "--net-size",
        type=at_least(0),
        help="size the network sees (default: its training size; 0: the image's own size)",
    )
    p.add_argument("--limit", type=at_least(1), help="at most this many items of each split")
    p.add_argument(
        "--batch-size", type=at_least(1), default=32, help="images per network call (default 32)"
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), auto (CUDA when torch sees a GPU, else cpu), cuda, cuda:1, ...",
    )
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument(
        "--pictures",
        help="PNG of the parts found on a sample of the test images (default, for data without "
        "labels only: OUT's name with _parts.png, else eval_parts.png beside the checkpoint)",
    )
    p.add_argument(
        "--pictures-n", type=at_least(1), default=8, help="images in the pictures (default 8)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _datasets(args, image_size: int, protocol: str = "ours"):
    from scops_fast.data import CUB, CelebAWild, ImageFolder, SyntheticParts

    kind, root = args.data, args.root
    if ":" in kind:
        kind, root = kind.split(":", 1)
    if kind not in DATA_KINDS:
        raise ValueError(f"--data: expected one of {', '.join(DATA_KINDS)}, got {kind!r}")
    size = args.size or image_size
    if kind == "synthetic":
        test = SyntheticParts(args.n, size=size, seed=args.seed)
        train = (
            None
            if args.no_regression
            else SyntheticParts(args.train_n, size=size, seed=args.train_seed)
        )
        spec = {
            "dataset": "synthetic",
            "size": size,
            "test": {"n": args.n, "seed": args.seed},
            "train": None if train is None else {"n": args.train_n, "seed": args.train_seed},
        }
        return train, test, spec
    if not root:
        raise ValueError(f"--data {kind} needs --root (or --data {kind}:ROOT)")
    common = {"size": size, "saliency_dir": args.saliency_dir}
    if kind == "folder":
        test = _opened(ImageFolder, root, **common)
        return None, test, {"dataset": kind, "root": root, "size": size}
    if protocol == "original" and kind == "cub":
        return _cub_original(args, root, size)
    cls = CelebAWild if kind == "celeba" else CUB
    if protocol == "original" and kind == "celeba":
        common.update(ORIGINAL_CELEBA)
    test_split = args.split or SPLITS[kind][0]
    train_split = args.train_split or SPLITS[kind][1]
    test = _opened(cls, root, split=test_split, **common)
    train = None if args.no_regression else _opened(cls, root, split=train_split, **common)
    spec = {
        "dataset": kind,
        "root": root,
        "size": size,
        "protocol": protocol,
        "test": {"split": test_split},
        "train": None if train is None else {"split": train_split},
    }
    return train, test, spec


def _opened(cls, root, **kwargs):
    """The data set `cls(root, ...)`; a file it does not find is named, with the layout it
    expects under --root."""
    from scops_fast.train.data import missing_file

    if not pathlib.Path(root).is_dir():
        raise ValueError(f"--root: {root} is not a folder")
    try:
        return cls(root, **kwargs)
    except FileNotFoundError as exc:
        missing = exc.filename and is_inside(pathlib.Path(exc.filename), pathlib.Path(root))
        if not missing:  # another argument's file (--saliency-dir): its own message
            raise
        raise ValueError(f"--root: {missing_file(cls, exc)}") from None


def _cub_original(args, root, size):
    """CUB as the original's evaluation reads it: CMR's cache, jittered square crops."""
    from scops_fast.data import SCOPS_CUB_SUBSETS, CUBOriginal

    if not args.cub_cache:
        raise ValueError(
            "--data cub --protocol original needs --cub-cache (CMR's cub cache folder)"
        )
    classes = None if args.cub_subset is None else SCOPS_CUB_SUBSETS[args.cub_subset]
    fit_classes = (
        None
        if args.cub_subset is None
        else sorted(c for subset in SCOPS_CUB_SUBSETS.values() for c in subset)
    )
    test_split = args.split or "test"
    train_split = args.train_split or "train"
    test = CUBOriginal(root, args.cub_cache, split=test_split, size=size, classes=classes)
    train = (
        None
        if args.no_regression
        else CUBOriginal(root, args.cub_cache, split=train_split, size=size, classes=fit_classes)
    )
    spec = {
        "dataset": "cub",
        "root": root,
        "size": size,
        "protocol": "original",
        "cub_subset": args.cub_subset,
        "test": {"split": test_split},
        "train": None if train is None else {"split": train_split},
    }
    return train, test, spec


def evaluate_checkpoint(args) -> dict:
    import torch

    from scops_fast.train import predict_parts
    from scops_fast.train.checkpoint import load_checkpoint
    from scops_fast.train.loading import load_any_model

    # Before the checkpoint is read: a missing GPU is not a damaged checkpoint.
    args.device = resolve_device(args.device)
    model, kind = load_any_model(args.checkpoint, map_location=args.device)
    original = kind == "original"
    ckpt = None if original else load_checkpoint(args.checkpoint)
    step = None if ckpt is None else int(ckpt["step"])
    if args.data is None:
        args.data, args.root = run_data(ckpt, args.root)
        where = f" {args.root}" if args.root else ""
        print(
            f"scops-eval: scoring on the data set the run trained on: {args.data}{where} "
            "(--data chooses another)",
            file=sys.stderr,
        )
    protocol = args.protocol or ("original" if original else "ours")
    train_size = model.image_size
    train, test, spec = _datasets(args, train_size, protocol)
    net_size = train_size if args.net_size is None else (args.net_size or None)
    if len(test) == 0:
        raise ValueError("the test split has no items")

    def predict(images):
        return predict_parts(model, images, size=net_size or images.shape[-2:])

    t0 = time.perf_counter()
    scored = has_labels(test)
    if scored:
        with torch.no_grad():
            result = evaluate_with_baselines(
                predict,
                train,
                test,
                model.num_parts,
                batch_size=args.batch_size,
                limit=args.limit,
                progress=not args.no_progress,
            )
    else:
        result = {"criteria": None, "n_images": item_count(test, args.limit)}
    out = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_step": step,
        "checkpoint_format": kind,
        "num_parts": model.num_parts,
        "data": spec,
        "network_input_size": net_size if net_size else "image size",
        "scored": scored,
        **result,
    }
    if args.pictures or not scored:
        path = pictures_path(args)
        with torch.no_grad():
            shown = write_pictures(path, predict, test, args.pictures_n, args.limit, spec, step)
        out["pictures"] = {"path": str(path), "images": shown}
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def run_data(ckpt: dict | None, root: str | None) -> tuple[str, str | None]:
    """(--data kind, --root) of the data set a run of ours trained on; `root` overrides the
    run's (the data may have moved)."""
    if ckpt is None:
        raise ValueError(
            "--data: an original SCOPS snapshot does not record what it was trained on; name "
            "it, e.g. --data celeba --root data/CelebA"
        )
    data = ckpt["config"]["data"]
    kind = data["dataset"]
    if kind == "synthetic":
        return kind, None
    if kind in DATA_KINDS:
        return kind, root or data.get("args", {}).get("root")
    raise ValueError(
        f"--data: the run trained on {kind!r}, which scops-eval cannot read; name one of "
        f"{', '.join(DATA_KINDS)} with --data"
    )


def has_labels(dataset) -> bool:
    """Whether the data set's items carry anything to score the parts against."""
    item = dataset[0]
    return any(item.get(key) is not None for key in LABEL_KEYS)


def pictures_path(args) -> pathlib.Path:
    if args.pictures:
        return pathlib.Path(args.pictures)
    if args.out:
        out = pathlib.Path(args.out)
        return out.with_name(f"{out.stem}_parts.png")
    checkpoint = pathlib.Path(args.checkpoint)
    # Not parts.png: beside a run's checkpoint that is the trainer's picture of its own data.
    return (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "eval_parts.png"


def write_pictures(path, predict, dataset, count: int, limit, spec: dict, step) -> int:
    """The labelled sheet of `count` images spread evenly over the data set (its first
    `limit`); returns how many it shows."""
    import torch

    from scops_fast import viz

    available = item_count(dataset, limit)
    count = max(1, min(count, available))
    indices = torch.linspace(0, available - 1, count).round().long().unique().tolist()
    items = [dataset[i] for i in indices]
    images = torch.stack([torch.as_tensor(item["img"]).float() for item in items])
    probs = torch.as_tensor(predict(images)).float().cpu()
    truth = viz.true_parts(items, images.shape[-2:])
    captions = [str(item.get("name", f"#{i}")) for i, item in zip(indices, items, strict=True)]
    where = spec.get("root") or spec.get("dataset", "")
    at = "" if step is None else f" (checkpoint step {step})"
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    viz.save_part_grid(
        path,
        images,
        probs,
        truth=truth,
        truth_names=getattr(dataset, "part_names", None) if truth is not None else None,
        captions=captions,
        title=f"Parts found on {len(items)} of {available} images of {where}{at}",
    )
    return len(items)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = evaluate_checkpoint(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"scops-eval: error: {exc}", file=sys.stderr)
        return 2
    if not result["scored"]:
        print(
            f"scops-eval: no labels in {result['data'].get('root', args.data)}, so nothing is "
            f"scored; the parts found on {result['pictures']['images']} of its "
            f"{result['n_images']} images: {result['pictures']['path']}",
            file=sys.stderr,
        )
    text = strict_json(result, indent=2) + "\n"
    sys.stdout.write(text)
    if args.out:
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
