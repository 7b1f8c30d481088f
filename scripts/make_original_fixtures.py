"""Regenerate tests/fixtures/original/ by running the ORIGINAL SCOPS code on fixed inputs.

    python scripts/make_original_fixtures.py --original PATH/TO/SCOPS --tps PATH/TO/tps_stn_pytorch
        [--out tests/fixtures/original] [--only tps,model,...]

PATH/TO/SCOPS is a checkout of NVlabs/SCOPS (commit 05da7e4), PATH/TO/tps_stn_pytorch one of
WarBean/tps_stn_pytorch (272a813): its `tps_stn_pytorch` submodule. The original is licensed
CC BY-NC-SA 4.0; nothing of it is copied into this repository. This script copies the checkout
to a temporary folder, makes it run on the CPU with torch 2.x (every `.cuda(...)` removed,
`torch.cuda.FloatTensor` -> `torch.Tensor`, `align_corners=True` in its grid sampler:
the torch 0.4 behaviour it was written for; the float32 types it names follow torch's
default dtype, which changes nothing in float32 and lets the step run in float64), stubs
the modules it imports but does not need (tensorboardX, visdom; `scipy.misc.imread` reads
with PIL), imports it, and records what it computes. Only numbers are written: inputs, the
original's outputs and how they were drawn.

It needs, beside this repository's own environment: opencv-python-headless, scikit-learn,
scipy, imageio, absl-py and matplotlib (the original's imports).

Every fixture file is an .npz (loadable with allow_pickle=False) named after its section;
`manifest.json` records the commits and versions it came from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "scripts"))
from original_checkout import git_head, prepare_original  # noqa: E402

from scops_fast.models.seeded import seeded_state_dict  # noqa: E402


@contextlib.contextmanager
def recorded(module, name: str, log: list):
    """Replaces `module.name` by a wrapper that appends each call's result to `log`."""
    inner = getattr(module, name)
    setattr(module, name, _record_calls(inner, log))
    try:
        yield log
    finally:
        setattr(module, name, inner)


def save(out: pathlib.Path, name: str, **arrays) -> None:
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise TypeError(f"{name}.{k}: object arrays would need pickle")
    np.savez_compressed(out / f"{name}.npz", **arrays)
    size = (out / f"{name}.npz").stat().st_size
    print(f"  {name}.npz: {', '.join(sorted(arrays))} ({size / 1024:.0f} KiB)")


def as_json(value) -> np.ndarray:
    return np.array(json.dumps(value))


# --------------------------------------------------------------------------- sections
def _record_reset(tps):
    """Calls tps.reset_control_points() and returns what it drew and computed: numpy
    uniforms, torch uniform_ results, random.randint results, TPSGridGen inputs."""
    import random

    from tps import rand_tps

    uniforms, perturbs, mirrors, sources = [], [], [], []
    grid_gen = rand_tps.TPSGridGen

    class Recording(grid_gen):
        def forward(self, source_control_points):
            sources.append(source_control_points.clone())
            return super().forward(source_control_points)

    real_uniform = torch.Tensor.uniform_

    def uniform_(self, *a, **k):
        out = real_uniform(self, *a, **k)
        perturbs.append(out.clone())
        return out

    rand_tps.TPSGridGen = Recording
    torch.Tensor.uniform_ = uniform_
    try:
        with recorded(np.random, "uniform", uniforms), recorded(random, "randint", mirrors):
            tps.reset_control_points()
    finally:
        rand_tps.TPSGridGen = grid_gen
        torch.Tensor.uniform_ = real_uniform
    return uniforms, perturbs, mirrors, sources


def make_tps(out: pathlib.Path) -> None:
    """RandTPS source points, with every random draw it made recorded."""
    import random

    from tps import rand_tps

    arrays = {}
    cases = [
        ("affine", False, (0.7, 2.0), 0),
        ("affine", True, (0.7, 1.1), 5),  # seeds whose second mirror draw is 1
        ("projective", False, (0.7, 2.0), 2),
        ("projective", True, (0.7, 1.1), 8),
    ]
    for mode, mirror, scale, seed in cases:
        np.random.seed(seed)
        torch.manual_seed(seed)
        random.seed(seed)
        tps = rand_tps.RandTPS(
            20, 16, batch_size=5, sigma=0.01, random_mirror=mirror, random_scale=scale, mode=mode
        )
        uniforms, perturbs, mirrors, sources = _record_reset(tps)
        key = f"{mode}_{'mirror' if mirror else 'plain'}"
        names = (
            ("angle", "scale", "shift_x", "shift_y")
            if mode == "affine"
            else ("tilt_x", "tilt_y", "angle", "scale")
        )
        if len(uniforms) != len(names) or len(perturbs) != 1 or len(sources) != 1:
            raise SystemExit(f"tps {key}: unexpected draws {len(uniforms)}, {len(perturbs)}")
        for n, u in zip(names, uniforms, strict=True):
            arrays[f"{key}.{n}"] = u  # degrees for angles, as drawn
        arrays[f"{key}.perturbation"] = perturbs[0].numpy()
        arrays[f"{key}.mirror"] = np.array(bool(mirrors[0]) if mirrors else False)
        arrays[f"{key}.random_scale"] = np.array(scale)
        arrays[f"{key}.source_points"] = sources[0].numpy()
        arrays[f"{key}.grid"] = tps.grid.detach().numpy()
        x = torch.from_numpy(np.random.RandomState(seed).randn(5, 3, 16, 20).astype(np.float32))
        arrays[f"{key}.input"] = x.numpy()
        arrays[f"{key}.warped_zeros"] = tps(x).detach().numpy()
        arrays[f"{key}.warped_border"] = tps(x, padding_mode="border").detach().numpy()
    save(out, "tps", **arrays)


def make_losses(out: pathlib.Path) -> None:
    """The loss module's extra names (softmax, get_variance) and its four losses."""
    import loss

    rs = np.random.RandomState(7)
    arrays = {}
    for dtype in ("float32", "float64"):
        part = rs.rand(9, 9).astype(dtype)
        part /= part.sum()
        xc, yc = 0.13, -0.27
        v_x, v_y = loss.get_variance(torch.from_numpy(part), xc, yc)
        arrays[f"variance_{dtype}.part_map"] = part
        arrays[f"variance_{dtype}.center"] = np.array([xc, yc])
        arrays[f"variance_{dtype}.v"] = np.array([float(v_x), float(v_y)])
        arrays[f"variance_{dtype}.v_dtype"] = np.array(str(v_x.dtype))
    logits = torch.from_numpy(rs.randn(2, 5, 12, 12).astype(np.float32))
    arrays["softmax.input"] = logits.numpy()
    arrays["softmax.output"] = loss.softmax(logits).numpy()
    arrays["concentration.input"] = logits.numpy()
    arrays["concentration.loss"] = loss.concentration_loss(logits).numpy()
    save(out, "losses", **arrays)


MODEL_CASES = (
    # name, constructor, parts, input shape, seed
    ("resnet50", "Res50_Deeplab_2branch", 8, (2, 3, 41, 57), 50),
    ("resnet101", "Res101_Deeplab_2branch", 4, (2, 3, 33, 33), 101),
)


def make_model(out: pathlib.Path) -> None:
    """Logits of the original two-branch DeepLab with seeded weights (see
    scops_fast.models.seeded), in eval mode and in train mode (batch statistics).

    Run in float64 and stored in float32: a float32 forward rounds differently on each CPU
    (train-mode logits moved by 1.3e-4 between an AVX-512 machine and an AVX2 one), so its
    record regenerated byte-identical only where it was made. Rounding a float64 result to
    float32 gives the same bytes wherever the float64 results agree to 1e-13."""
    from model import deeplab_2branch

    arrays = {}
    for name, ctor, parts, shape, seed in MODEL_CASES:
        net = getattr(deeplab_2branch, ctor)(num_classes=parts + 1)
        shapes = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
        state = {k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes, seed).items()}
        net.load_state_dict(state)
        net.double()
        x = torch.from_numpy(
            (np.random.RandomState(seed).rand(*shape) * 255 - 120).astype(np.float32)
        )
        with torch.no_grad():
            net.eval()
            eval_logits = net(x.double())[2].float()
            net.train()
            train_logits = net(x.double())[2].float()
        trainable = [k for k, p in net.named_parameters() if p.requires_grad]
        arrays[f"{name}.state_shapes"] = as_json(shapes)
        arrays[f"{name}.seed"] = np.array(seed)
        arrays[f"{name}.num_parts"] = np.array(parts)
        arrays[f"{name}.input"] = x.numpy()
        arrays[f"{name}.logits_eval"] = eval_logits.numpy()
        arrays[f"{name}.logits_train"] = train_logits.numpy()
        arrays[f"{name}.trainable"] = as_json(trainable)
        arrays[f"{name}.running_mean_after_train"] = (
            net.layer1[0].downsample[1].running_mean.float()
        )
    save(out, "model", **arrays)


def make_evaluation(out: pathlib.Path) -> None:
    """evaluate_celebAWild.py's landmark pipeline on fixed logits: part centres in pixels
    (visualize.Batch_Get_Centers) and the regression errors (face_evaluation_wild)."""
    import loss  # the checkout's folder, also when this section runs alone (--only)

    sys.path.insert(0, str(pathlib.Path(loss.__file__).parent / "evaluation"))
    import face_evaluation_wild
    import visualize

    rs = np.random.RandomState(11)
    arrays = {}
    centers = {}
    for split, n in (("train", 40), ("test", 16)):
        logits = rs.randn(n, 5, 24, 24).astype(np.float32) * 3
        # Landmarks as the original data set gives them: integer pixels.
        gt = rs.randint(2, 22, size=(n, 5, 2)).astype(np.float64)
        c = visualize.Batch_Get_Centers(torch.from_numpy(logits))
        centers[split] = (c, gt)
        arrays[f"{split}.logits"] = logits
        arrays[f"{split}.landmarks"] = gt
        arrays[f"{split}.centers"] = c
    err_train, err_test = face_evaluation_wild.face_evaluation(
        centers["train"][0], centers["train"][1], centers["test"][0], centers["test"][1]
    )
    arrays["error_train"] = np.array(err_train)
    arrays["error_test"] = np.array(err_test)
    save(out, "evaluation", **arrays)


#: The step fixture's size: the CelebA K=8 experiment (exps/SCOPS_K8_retrain.json) at a
#: size and batch the CPU runs in seconds.
STEP_SIZE, STEP_BATCH, STEP_MODEL_SEED, STEP_VGG_SEED = 64, 2, 8, 19
CAFFE_MEAN_DECIMALS_BGR = (104.00698793, 116.66876762, 122.67891434)
CAFFE_MEAN_BGR = np.array(CAFFE_MEAN_DECIMALS_BGR, dtype=np.float32)


def seeded_vgg19(build):
    """`build()`'s VGG-19 with seeded `features` (the original uses only those)."""
    net = build(weights=None)
    shapes = [(k, tuple(v.shape)) for k, v in net.features.state_dict().items()]
    state = seeded_state_dict([(f"features.{k}", s) for k, s in shapes], STEP_VGG_SEED)
    net.features.load_state_dict(
        {k[len("features.") :]: torch.from_numpy(v) for k, v in state.items()}
    )
    return net


class _Proxy:
    """A module whose attribute `name` is replaced by `fn`; the rest is `module`'s."""

    def __init__(self, module, **replaced):
        self._module, self._replaced = module, replaced

    def __getattr__(self, name):
        return self._replaced.get(name) or getattr(self._module, name)


def make_step(out: pathlib.Path) -> None:
    """Step 0 of the original trainer (train.main with exps/SCOPS_K8_retrain.json at
    64x64, batch 2): its inputs, random draws, jittered and warped images, and how often
    each parameter occurs in its optimiser group, from a float32 run; and the same step
    run in float64 (`f64.*`): its draws, network input, five losses and clipped gradients.

    The float64 run is the original with every float32 it names made float64 (torch's
    default dtype, its image mean, DTYPE_EDITS of scripts/original_checkout.py). Its
    numbers are what a step of the original computes, free of float32 rounding:
    batch-statistics BatchNorm at batch 2 amplifies float32 rounding to percents in early
    gradients (another CPU's BLAS rounds differently), float64 rounding to about 1e-10.
    The float32 run keeps what is exact or lives in float32: the 8-bit jitter and the
    float32 TPS grid solve."""
    arrays = _original_step(torch.float32)
    keep = ("loss.", "grad.", "summary.", "grad_norms")
    arrays = {k: v for k, v in arrays.items() if not k.startswith(keep)}
    f64 = _original_step(torch.float64)
    for key in ("source_points", "images_cj", "img", "saliency", "basis", "lrs", *keep):
        for name, value in f64.items():
            if name == key or (key.endswith(".") and name.startswith(key)):
                arrays[f"f64.{name}"] = value
    save(out, "step", **arrays)


def _original_step(dtype: torch.dtype) -> dict:
    """The original's step 0 on one thread, in `dtype` (see make_step)."""
    import loss
    import scops_trainer
    import torchvision
    import train
    from model import model_factory
    from tps import rand_tps

    exp = json.loads(
        (pathlib.Path(loss.__file__).parent / "exps" / "SCOPS_K8_retrain.json").read_text()
    )
    rs = np.random.RandomState(5)
    h = w = STEP_SIZE
    # Smooth random images: blobs of colour, so the jitter and the warp see structure.
    yy, xx = np.mgrid[0:h, 0:w] / h
    imgs_u8 = []
    for _ in range(STEP_BATCH):
        chans = [
            sum(
                rs.uniform(40, 120)
                * np.exp(-((xx - rs.rand()) ** 2 + (yy - rs.rand()) ** 2) / 0.05)
                for _ in range(3)
            )
            + rs.uniform(0, 60)
            for _ in range(3)
        ]
        imgs_u8.append(np.clip(np.stack(chans) + rs.randn(3, h, w) * 8, 0, 255).astype(np.uint8))
    imgs_u8 = np.stack(imgs_u8)
    saliency = np.clip(
        1.2 - np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 2.5 + rs.rand(STEP_BATCH, h, w) * 0.1,
        0,
        1,
    ).astype(np.float32)
    # What the original's CelebA loader yields: RGB minus the RGB-ordered mean, float32
    # (in the float64 run: float64, the mean's decimals not rounded to float32).
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    mean_bgr = np.array(CAFFE_MEAN_DECIMALS_BGR, dtype=np_dtype)
    mean_rgb = mean_bgr[::-1].reshape(1, 3, 1, 1)
    items = [
        {
            "img": (imgs_u8[i].astype(np_dtype) - mean_rgb[0]),
            "saliency": saliency[i].astype(np_dtype),
            "size": np.array([h, w, 3]),
            "name": f"{i:06d}.jpg",
        }
        for i in range(STEP_BATCH)
    ]

    tmp = pathlib.Path(tempfile.mkdtemp())
    exp.update(
        {
            "input_size": f"{h},{w}",
            "batch_size": STEP_BATCH,
            "num_steps": 1,
            "num_workers": 0,
            "restore_from": "None",
            "snapshot_dir": str(tmp),
        }
    )
    (tmp / "exp.json").write_text(json.dumps(exp))
    rec = {
        "tps": [],
        "jitter_params": [],
        "cj_in": [],
        "cj_out": [],
        "mse": [],
        "kl": [],
        "clip": [],
    }
    cap = {}

    def generate_model(args):
        net = model_factory.model_generator(args)
        shapes = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
        state = seeded_state_dict(shapes, STEP_MODEL_SEED)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        cap["shapes"] = shapes
        return net

    real_step, real_init = scops_trainer.SCOPSTrainer.step, scops_trainer.SCOPSTrainer.__init__
    real_mean = scops_trainer.IMG_MEAN

    def init(self, args, model):
        real_init(self, args, model)
        basis = np.abs(
            seeded_state_dict([("w", (args.num_parts, self.zoo_feat_net.out_dim))], 1)["w"]
        )
        self.part_basis_generator.w.data.copy_(torch.from_numpy(basis))
        cj = self.cj_transform

        def jitter(img):
            rec["cj_in"].append(img.clone())
            result = cj(img)
            rec["cj_out"].append(result.clone())
            return result

        self.cj_transform = jitter
        self.kl = _record_calls(self.kl, rec["kl"])
        tps_forward = self.tps.forward

        def tps_forward_recorded(x, padding_mode=None):
            y = tps_forward(x, padding_mode)
            if "images_cj" not in cap:
                cap["images_cj"], cap["images_tps"] = x.clone(), y.detach().clone()
                cap["tps_grid"] = self.tps.grid.detach().clone()
            return y

        self.tps.forward = tps_forward_recorded

    def step(self, batch, i):
        cap["batch_names"] = list(batch["name"])
        cap["img"] = batch["img"].clone()
        cap["saliency"] = batch["saliency"].clone()
        cap["basis"] = self.part_basis_generator.w.detach().clone()
        real_step(self, batch, i)
        # The update's inputs: the clipped gradients (the optimisers do not change them)
        # and how often each parameter occurs in its optimiser group (the original lists
        # backbone parameters once per module that contains them).
        names = {id(p): n for n, p in self.model.named_parameters()}
        names[id(self.part_basis_generator.w)] = "basis.w"
        cap["grads"], cap["multiplicity"] = {}, {}
        for opt in (self.optimizer_seg, self.optimizer_sc):
            for g, group in enumerate(opt.param_groups):
                for p in group["params"]:
                    name = names[id(p)]
                    cap["grads"][name] = p.grad.numpy().copy()
                    cap["multiplicity"][name] = cap["multiplicity"].get(name, 0) + 1
                    cap.setdefault("group", {})[name] = g
        cap["lrs"] = [g["lr"] for g in self.optimizer_seg.param_groups]

    losses_called = {
        n: [] for n in ("concentration_loss", "semantic_consistency_loss", "orthonomal_loss")
    }
    originals = {n: getattr(loss, n) for n in losses_called}
    jitter_get_params = torchvision.transforms.ColorJitter.get_params
    real_vgg19 = torchvision.models.vgg19
    grid_gen = rand_tps.TPSGridGen

    class Recording(grid_gen):
        def forward(self, source_control_points):
            rec["tps"].append(source_control_points.clone())
            return super().forward(source_control_points)

    def get_params(*args):
        params = jitter_get_params(*args)
        rec["jitter_params"].append(params)
        return params

    clip = torch.nn.utils.clip_grad_norm_

    def clip_recorded(*a, **k):
        norm = clip(*a, **k)
        rec["clip"].append(float(norm))
        return norm

    try:
        for n in losses_called:
            setattr(loss, n, _record_calls(originals[n], losses_called[n]))
        scops_trainer.F = _Proxy(
            torch.nn.functional, mse_loss=_record_calls(torch.nn.functional.mse_loss, rec["mse"])
        )
        torchvision.models.vgg19 = lambda *a, **k: seeded_vgg19(real_vgg19)
        torchvision.transforms.ColorJitter.get_params = staticmethod(get_params)
        torch.nn.utils.clip_grad_norm_ = clip_recorded
        scops_trainer.SCOPSTrainer.__init__, scops_trainer.SCOPSTrainer.step = init, step
        train.model_generator = generate_model
        train.dataset_generator = lambda args: items
        sys.argv = ["train.py", "-f", str(tmp / "exp.json")]
        rand_tps.TPSGridGen = Recording
        scops_trainer.IMG_MEAN = mean_bgr
        torch.set_default_dtype(dtype)
        torch.manual_seed(0)
        np.random.seed(0)
        with contextlib.redirect_stdout(sys.stderr):
            train.main()
    finally:
        torch.set_default_dtype(torch.float32)
        scops_trainer.IMG_MEAN = real_mean
        rand_tps.TPSGridGen = grid_gen
        for n in losses_called:
            setattr(loss, n, originals[n])
        scops_trainer.F = torch.nn.functional
        torchvision.transforms.ColorJitter.get_params = jitter_get_params
        torchvision.models.vgg19 = real_vgg19
        torch.nn.utils.clip_grad_norm_ = clip
        scops_trainer.SCOPSTrainer.__init__, scops_trainer.SCOPSTrainer.step = real_init, real_step
        shutil.rmtree(tmp)

    order = [int(n[:6]) for n in cap["batch_names"]]
    # The step's reset draws the warp (the constructor drew one before it).
    arrays = {
        "config": as_json({**exp, "snapshot_dir": "<temporary folder>"}),
        "img_u8": imgs_u8[order],
        "img": cap["img"].numpy(),
        "saliency": cap["saliency"].numpy(),
        "basis": cap["basis"].numpy(),
        "model_seed": np.array(STEP_MODEL_SEED),
        "vgg_seed": np.array(STEP_VGG_SEED),
        "state_shapes": as_json(cap["shapes"]),
        "source_points": rec["tps"][-1].numpy(),
        "images_cj": cap["images_cj"].numpy(),
        "images_tps": cap["images_tps"].numpy(),
        "tps_grid": cap["tps_grid"].numpy(),
        "jitter_in": torch.stack(rec["cj_in"]).numpy(),
        "jitter_out": torch.stack(rec["cj_out"]).numpy(),
        "jitter_order": np.stack([p[0].numpy() for p in rec["jitter_params"]]),
        "jitter_factors": np.array([p[1:] for p in rec["jitter_params"]]),
        "loss.concentration": losses_called["concentration_loss"][0].detach().numpy(),
        "loss.equivariance": rec["kl"][0].detach().numpy(),
        "loss.landmark_equivariance": rec["mse"][0].detach().numpy(),
        "loss.semantic": losses_called["semantic_consistency_loss"][0].detach().numpy(),
        "loss.orthonormal": losses_called["orthonomal_loss"][0].detach().numpy(),
        "grad_norms": np.array(rec["clip"]),
        "lrs": np.array(cap["lrs"]),
        "multiplicity": as_json(cap["multiplicity"]),
        "param_group": as_json(cap["group"]),
        "dtype": np.array(str(dtype)),
    }
    recorded_dtypes = {
        str(v.dtype)
        for k, v in arrays.items()
        if k.startswith(("loss.", "images_", "source_points", "basis", "tps_grid"))
    } | {str(g.dtype) for g in cap["grads"].values()}
    if recorded_dtypes != {str(dtype).removeprefix("torch.")}:
        raise SystemExit(f"step in {dtype}: the original computed in {recorded_dtypes}")
    probe = np.random.default_rng(0)
    for name, upd in cap["grads"].items():
        if name.startswith(("layer5.", "basis.")) or upd.size <= 4096:
            arrays[f"grad.{name}"] = upd
        else:
            # A summary of large tensors: norm, a signed random projection, 64 entries.
            flat = upd.reshape(-1).astype(np.float64)
            signs = probe.choice([-1.0, 1.0], size=flat.size)
            idx = probe.choice(flat.size, size=64, replace=False)
            arrays[f"summary.{name}"] = np.concatenate(
                ([np.linalg.norm(flat), flat @ signs], flat[idx], idx.astype(np.float64))
            )
    return arrays


def _record_calls(fn, log: list):
    """`fn`, appending each call's result to `log`."""

    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        log.append(out)
        return out

    return wrapper


#: The fake CelebA-wild tree: (height, width) of each image and its face box (x, y, w, h).
CELEBA_TREE = (
    ((61, 47), (8, 10, 30, 36)),  # face covers 0.38: kept
    ((50, 80), (30, 12, 20, 22)),  # 0.11: filtered out by celeba_th 0.3
    ((72, 72), (10, 8, 50, 55)),
    ((45, 90), (20, 5, 40, 32)),  # 0.32: kept
    ((66, 53), (5, 6, 40, 44)),
)


def celeba_tree(root: pathlib.Path, rng: np.random.RandomState) -> dict:
    """Writes a CelebA-wild tree in the original's file formats under root; returns its
    arrays (images and saliency maps as written: PNG data, whatever the .jpg name says,
    so that every decoder reads the same pixels)."""
    from PIL import Image

    (root / "img_celeba").mkdir(parents=True)
    (root / "Saliency_Wild").mkdir()
    (root / "MAFL").mkdir()
    arrays, lm_rows, box_rows, size_rows, names = {}, [], [], [], []
    for i, ((h, w), box) in enumerate(CELEBA_TREE, start=1):
        name = f"{i:06d}.jpg"
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack(
            [
                127 + 90 * np.sin(xx * rng.uniform(0.05, 0.3) + yy * rng.uniform(0.05, 0.3) + c)
                for c in range(3)
            ],
            -1,
        )
        img = np.clip(img + rng.randn(h, w, 3) * 12, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "img_celeba" / name, format="PNG")
        # One map at another size than its image: the original resizes it to the image first.
        sh, sw = (h // 2, w // 2) if i == 4 else (h, w)
        sal = (rng.rand(sh, sw) * 255).astype(np.uint8)
        Image.fromarray(sal).save(root / "Saliency_Wild" / f"{i:06d}.png")
        x, y, bw, bh = box
        marks = rng.randint(0, min(h, w), size=(5, 2))
        lm_rows.append(name + "".join(f" {a} {b}" for a, b in marks))
        box_rows.append(f"{name} {x} {y} {bw} {bh}")
        size_rows.append(f"{name} {h} {w}")
        names.append(name)
        arrays[f"tree.{name}.image"] = img
        arrays[f"tree.{name}.saliency"] = sal
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
    header += "rightmouth_x rightmouth_y"
    files = {
        "list_landmarks_celeba.txt": f"{len(names)}\n{header}\n" + "\n".join(lm_rows) + "\n",
        "list_bbox_celeba.txt": f"{len(names)}\nimage_id x_1 y_1 width height\n"
        + "\n".join(box_rows)
        + "\n",
        "list_imsize_celeba.txt": f"{len(names)}\nimage_id height width\n"
        + "\n".join(size_rows)
        + "\n",
        "MAFL/celebA_training.txt": "\n".join(names) + "\n",
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
        arrays[f"tree.{rel}"] = np.array(text)
    return arrays


def make_celeba(out: pathlib.Path) -> None:
    """What the original's CelebAWildDataset returns for a fake tree: resized image (RGB
    minus the mean), saliency, integer landmarks; which images the face-area filter keeps;
    and the centre-crop variant's image and saliency."""
    from dataset.celeba_wild_dataset import CelebAWildDataset

    root = pathlib.Path(tempfile.mkdtemp()) / "CelebA"
    arrays = celeba_tree(root, np.random.RandomState(3))
    size = (40, 40)
    try:
        for variant, center in (("resize", False), ("center_crop", True)):
            ds = CelebAWildDataset(
                str(root),
                str(root / "MAFL" / "celebA_training.txt"),
                crop_size=size,
                mean=CAFFE_MEAN_BGR,
                center_crop=center,
                iou_threshold=0.3,
            )
            # Its centre crop never sets the landmark scale (it fails on a first item).
            ds.scale_x = ds.scale_y = 1.0
            kept = [f["name"] for f in ds.files]
            arrays[f"{variant}.kept"] = np.array(kept)
            for i, name in enumerate(kept):
                item = ds[i]
                arrays[f"{variant}.{name}.img"] = item["img"]
                arrays[f"{variant}.{name}.saliency"] = item["saliency"]
                if not center:
                    arrays[f"{variant}.{name}.landmarks"] = item["landmarks"].numpy()
                    arrays[f"{variant}.{name}.size"] = item["size"]
    finally:
        shutil.rmtree(root.parent)
    arrays["size"] = np.array(size)
    save(out, "celeba", **arrays)


CUB_SIZE = 64


def cub_tree(root: pathlib.Path, cache: pathlib.Path, rng: np.random.RandomState) -> dict:
    """A CUB image folder and a CMR cache (`data/test_cub_cleaned.mat`, `sfm/anno_test.mat`)
    in the original's formats; returns the arrays written."""
    import scipy.io
    from PIL import Image

    (cache / "data").mkdir(parents=True)
    (cache / "sfm").mkdir()
    arrays, records, sfm = {}, [], []
    specs = [  # rel_path, (h, w), box (x1, y1, x2, y2) 1-based, grey image
        ("001.Black_footed_Albatross/a_0001.jpg", (60, 80), (10, 12, 50, 45), False),
        ("002.Laysan_Albatross/b_0002.jpg", (70, 52), (3, 5, 50, 66), False),
        ("003.Sooty_Albatross/c_0003.jpg", (48, 48), (20, 2, 47, 30), True),  # box at the edge
        ("004.Groove_billed_Ani/d_0004.jpg", (55, 90), (30, 10, 60, 40), False),
    ]
    for rel, (h, w), (x1, y1, x2, y2), grey in specs:
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (h, w) if grey else (h, w, 3)
        img = (rng.rand(*shape) * 255).astype(np.uint8)
        Image.fromarray(img).save(path, format="PNG")
        arrays[f"tree.{rel}.image"] = img
        parts = np.zeros((3, 15))
        parts[0] = rng.randint(x1, x2 + 1, 15)
        parts[1] = rng.randint(y1, y2 + 1, 15)
        parts[2] = rng.rand(15) > 0.3
        parts[:2, parts[2] == 0] = 0
        mask = (rng.rand(h, w) > 0.5).astype(np.uint8)
        bbox = {"x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2)}
        records.append((rel, bbox, parts, mask))
        sfm.append((np.array(1.0), np.zeros(2), np.eye(3)))
        arrays[f"tree.{rel}.bbox"] = np.array([x1, y1, x2, y2], np.float64)
        arrays[f"tree.{rel}.parts"] = parts
        arrays[f"tree.{rel}.mask"] = mask
    images = np.zeros(len(records), dtype=[(k, "O") for k in ("rel_path", "bbox", "parts", "mask")])
    for i, r in enumerate(records):
        images[i] = r
    scipy.io.savemat(str(cache / "data" / "test_cub_cleaned.mat"), {"images": images})
    anno = np.zeros(len(sfm), dtype=[(k, "O") for k in ("scale", "trans", "rot")])
    for i, r in enumerate(sfm):
        anno[i] = r
    scipy.io.savemat(str(cache / "sfm" / "anno_test.mat"), {"sfm_anno": anno})
    arrays["tree.rel_paths"] = np.array([r[0] for r in records])
    return arrays


def make_cub(out: pathlib.Path) -> None:
    """What the original's CUB dataset class (evaluate_cub.py's loader) returns for a fake
    CUB tree and CMR cache: the image (RGB minus the mean), keypoints in [-1, 1] and the
    mask, with the box-jitter draws it made (it jitters test images too)."""
    from dataset import base, cub

    base.IMG_SIZE = CUB_SIZE  # its output side, 256 in the original; smaller fixtures
    tmp = pathlib.Path(tempfile.mkdtemp())
    arrays = cub_tree(tmp / "CUB_200_2011", tmp / "cache", np.random.RandomState(9))
    cub.cub_dir, cub.cub_cache_dir = str(tmp / "CUB_200_2011"), str(tmp / "cache")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            ds = cub.CUBDataset(opts=None)
        np.random.seed(0)
        for i, rel in enumerate(arrays["tree.rel_paths"]):
            draws = []
            with recorded(np.random, "random", draws):
                item = ds[i]
            arrays[f"{rel}.draws"] = np.array(draws)
            arrays[f"{rel}.img"] = item["img"]
            arrays[f"{rel}.kp"] = item["kp"]
            arrays[f"{rel}.mask"] = item["mask"]
    finally:
        shutil.rmtree(tmp)
    arrays["size"] = np.array(CUB_SIZE)
    save(out, "cub", **arrays)


SECTIONS = {
    "tps": make_tps,
    "losses": make_losses,
    "model": make_model,
    "evaluation": make_evaluation,
    "step": make_step,
    "celeba": make_celeba,
    "cub": make_cub,
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--original", required=True, type=pathlib.Path, help="NVlabs/SCOPS checkout")
    p.add_argument("--tps", required=True, type=pathlib.Path, help="tps_stn_pytorch checkout")
    p.add_argument("--out", type=pathlib.Path, default=REPO / "tests" / "fixtures" / "original")
    p.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    args = p.parse_args(argv)
    wanted = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        p.error(f"--only: unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    torch.set_num_threads(1)  # deterministic reductions in the recorded outputs
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_original(args.original, args.tps, pathlib.Path(tmp))
        for name in wanted:
            print(f"{name}:")
            SECTIONS[name](args.out)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    import cv2
    import PIL

    manifest.update(
        {
            "original_commit": git_head(args.original),
            "tps_commit": git_head(args.tps),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "pillow": PIL.__version__,
        }
    )
    manifest.setdefault("sections", {})
    for name in wanted:
        manifest["sections"][name] = f"{name}.npz"
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
