"""SCOPS training (SPEC section 8): five losses through `scops_fast.losses`, two SGD
optimisers (network with a poly schedule, part basis at a constant rate), seeded
augmentation, atomic checkpoints with everything needed to resume bit for bit, and
DistributedDataParallel under torchrun.

Determinism: the network is initialised from `seed`; the basis, the warps, the
colour jitter and the data order each draw from their own generator, derived from
`seed`, whose states are checkpointed. On the CPU the same config and seed give the
same weights on the same machine and software, and 3 steps + resume + 3 steps give the
weights of 6 steps. On CUDA only to rounding: the upsampling's backward (atomics) and
cuDNN's algorithms add in an order that varies.
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from scops_fast import losses
from scops_fast.models import build_features
from scops_fast.models.weights import WeightsFileError
from scops_fast.tps import tps_grid, tps_warp
from scops_fast.train import distributed
from scops_fast.train.augment import GlobalBatchColorJitter, GlobalBatchWarps
from scops_fast.train.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    load_checkpoint,
    save_atomic,
)
from scops_fast.train.config import Config, ConfigError, config_from_dict, dotted_value
from scops_fast.train.data import (
    GlobalBatchOrder,
    batches,
    build_dataset,
    describe_items,
    mark_unreadable,
    skipped_indices,
    substituted,
)
from scops_fast.train.heap import release_free_heap
from scops_fast.train.loading import build_network, upsample_logits
from scops_fast.train.progress import RunLog
from scops_fast.train.stopping import GracefulStop

#: Logged values, in this order: the weighted total, then each loss unweighted.
LOSS_NAMES = ("concentration", "equivariance", "landmark_equivariance", "semantic", "orthonormal")
LOG_NAMES = ("loss", *LOSS_NAMES)

# Offsets that derive each generator's seed from the run's seed.
_BASIS_SEED, _WARP_SEED, _JITTER_SEED = 1, 2, 3

#: `Config.precision` -> the autocast dtype (None: no autocast).
AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(device_type: str, dtype: torch.dtype | None):
    """torch.autocast to `dtype`; nothing at all for None, so that full-precision runs
    (and the float64 trainers of the tests) are untouched."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during `Trainer.train`: the step under way was finished and
    checkpointed (`scops_fast.train.stopping`)."""

    def __init__(self, step: int, checkpoint: pathlib.Path, sig: signal.Signals):
        super().__init__(f"stopped by {sig.name} after step {step}; checkpoint {checkpoint}")
        self.step, self.checkpoint, self.signal = step, checkpoint, sig


class TrainingDiverged(RuntimeError):
    """The weights became non-finite (NaN or infinite), found at a log or checkpoint step:
    the run stops there without saving them, so its checkpoint keeps the last finite
    weights."""

    def __init__(self, step: int, checkpoint: pathlib.Path, saved_step: int | None):
        kept = (
            f"{checkpoint} still holds step {saved_step}, the last saved"
            if saved_step is not None
            else "this run has saved no checkpoint"
        )
        super().__init__(
            f"training diverged: the weights are not finite at step {step} (the losses in "
            f"metrics.jsonl show where it started); nothing of it was saved, and {kept}. "
            "Start again with a lower optim.lr, or look for data that is not finite"
        )
        self.step, self.checkpoint, self.saved_step = step, checkpoint, saved_step


class SCOPSObjective(nn.Module):
    """The trained parameters: segmentation network and part basis w (K, C). One
    module so that DistributedDataParallel averages the basis gradient too."""

    def __init__(
        self,
        net: nn.Module,
        channels: int,
        normalize_basis: bool,
        seed: int,
        autocast_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.net = net
        gen = torch.Generator().manual_seed(seed)
        self.basis = nn.Parameter(torch.randn(net.num_parts, channels, generator=gen).abs())
        self.normalize_basis = normalize_basis
        self.autocast_dtype = autocast_dtype

    def part_basis(self) -> torch.Tensor:
        """W = relu(w), rows L2-normalised when feature normalisation is on."""
        w = F.relu(self.basis)
        return F.normalize(w, dim=1) if self.normalize_basis else w

    def forward(self, images: torch.Tensor, warped: torch.Tensor):
        # Two passes, not one over the concatenation: BatchNorm in train mode keeps
        # separate batch statistics for the two branches, as the original.
        with autocast(images.device.type, self.autocast_dtype):
            logits, logits_warped = self.net(images), self.net(warped)
        # The basis outside autocast: a parameter of the losses, which stay float32.
        return logits, logits_warped, self.part_basis()


def nested_repeats(net: nn.Module) -> list[nn.Parameter]:
    """The network's trainable backbone parameters, each listed once per module of the
    original's layout that contains it, as the original builds its optimiser group:
    conv1 once, a block's convolutions 3 times (layerN, the block, the conv), a shortcut's
    convolution and BatchNorm 4 times (layerN, the block, `downsample`, the layer)."""
    out = []
    for name, p in net.backbone.named_parameters():
        if not p.requires_grad:
            continue
        module_path = name.split(".")[:-1]
        out += [p] * (1 if module_path[0] == "stem" else len(module_path))
    return out


def _check_backend(backend: str | None, device_type: str, num_parts: int) -> None:
    """A named loss backend that cannot run here, or cannot take K + 1 channels, fails now
    with the reason, not inside the first step."""
    from scops_fast._dispatch import _load, unavailable_reason

    if backend in (None, "auto"):
        return
    reason = unavailable_reason(backend, None, device_type)
    if reason is not None:
        raise ConfigError(
            f"loss.backend {backend!r} cannot run on this run's {device_type} device: {reason}"
        )
    # Every op's input check on shapes alone (meta tensors): the part maps' channels.
    probe = torch.empty(1, num_parts + 1, 1, 1, device="meta")
    for op, entry in _load(backend).module.OPS.items():
        reason = entry.supports(*[probe] * 4)
        if reason is not None:
            raise ConfigError(
                f"loss.backend {backend!r} cannot run {op} with model.num_parts = {num_parts}: "
                f"{reason}; use loss.backend 'auto', which passes such inputs to another backend"
            )


def cuda_rng_state_for(saved, device: torch.device):
    """The CUDA generator state of a checkpoint to restore on `device`, or None: a CPU run,
    or none saved. Checkpoints before 2026-12-08 hold one state per GPU the saving process
    saw (torch.cuda.get_rng_state_all): the one of the device's index, where there is one."""
    if device.type != "cuda" or saved is None:
        return None
    if isinstance(saved, list | tuple):
        index = device.index or 0
        return saved[index] if index < len(saved) else None
    return saved


def _check_precision(cfg: Config, device_type: str) -> None:
    """Precision settings that cannot work fail now, with the reason; one that works but
    slowly here is warned about."""
    if cfg.precision == "float16" and cfg.optim.nested_param_repeats:
        # GradScaler.unscale_ divides each listed gradient: a repeated one several times.
        raise ConfigError(
            "precision 'float16' cannot be combined with optim.nested_param_repeats: the "
            "float16 gradient scaler would unscale a repeated parameter's gradient once per "
            "repeat; use precision 'bfloat16' (no scaler) or 'float32'"
        )
    if device_type != "cpu" or cfg.precision == "float32":
        return
    if cpu_has_native(cfg.precision) is False:
        # Measured on the demo (AVX2 EPYC): 3.6 s (bfloat16) and 4.3 s (float16) a step
        # against 0.31 s in float32, nearly all in torch's fallback convolutions.
        warnings.warn(
            f"precision {cfg.precision!r} on a CPU without native {cfg.precision} "
            "convolutions (oneDNN needs AVX-512 BF16/FP16 or AMX): torch falls back to slow "
            "convolutions, about 12x slower than float32 on the demo; mixed precision pays on "
            "GPUs and on CPUs with those instructions",
            RuntimeWarning,
            stacklevel=3,
        )


def cpu_has_native(precision: str) -> bool | None:
    """Whether oneDNN has native `precision` ("bfloat16", "float16") convolutions on this
    CPU; None where this torch cannot say."""
    probe = {"bfloat16": "_is_mkldnn_bf16_supported", "float16": "_is_mkldnn_fp16_supported"}
    native = getattr(torch.ops.mkldnn, probe[precision], None)
    return None if native is None else bool(native())


#: What `Config.compile` and `Config.channels_last` mean when left at None, per device type.
#: CPU, off: the SPEC section 8 step at 256x256, batch 2 (AMD EPYC with AVX-512, two timed
#: steps each, `benchmarks/train_step.py run --set ...`) took 4.71-4.80 s plain, 4.53 s in
#: channels-last and 4.54-4.58 s compiled after a 52 s cold compile and +240 MB: gains of 4-5 %,
#: within what the machine's load moves, and compile's pays back only after about 20 min.
#: CUDA, off until `make gpu-check`'s rows (channels_last, compile) measure them.
NETWORK_OPTION_DEFAULTS = {"cpu": False, "cuda": False}


def network_option(value: bool | None, device_type: str) -> bool:
    return NETWORK_OPTION_DEFAULTS.get(device_type, False) if value is None else value


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    return base * max(0.0, 1.0 - step / total) ** power


class Trainer:
    """One training run, writing into `out_dir`.

    dataset: optional, overrides the config's data set (items as
    `scops_fast.data`: dicts with `img` (3, H, W) in [0, 1] and `saliency` (H, W)).
    resume: continue from `out_dir/checkpoint.pt` when it exists; the checkpoint's
    config is used, except `steps`, `loss.backend` and `model.activation_checkpointing`,
    which come from `config`.
    alone: one process on this rank's device even under torchrun, no process group (the
    batch-size probe's steps on rank 0).
    The global torch RNG is seeded with the config's seed (it initialises the network).
    """

    def __init__(
        self,
        config: Config,
        out_dir: str | pathlib.Path,
        *,
        resume: bool = False,
        dataset=None,
        progress: bool = True,
        tensorboard: bool = True,
        alone: bool = False,
    ):
        self.out_dir = pathlib.Path(out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        ckpt = None
        #: What a resumed run did with the settings it was given (one line; None when it
        #: starts afresh): those it ignored, those it changed. scops-train prints it.
        self.resume_note: str | None = None
        if resume and self.checkpoint_path.exists():
            ckpt = load_checkpoint(self.checkpoint_path)
            config, self.resume_note = _resumed_config(ckpt, config)
        self.cfg = cfg = config
        self.proc = distributed.setup(cfg.device, alone=alone)
        #: Where the ranks agree to stop (stopping.GracefulStop): gloo, also under nccl.
        self.stop_group = distributed.cpu_group(self.proc)
        self.device = self.proc.device
        self.progress, self.tensorboard = progress, tensorboard
        _check_backend(cfg.loss.backend, self.device.type, cfg.model.num_parts)
        _check_precision(cfg, self.device.type)
        if cfg.data.accumulate > 1 and cfg.model.batchnorm == "train" and self.proc.is_main:
            warnings.warn(
                f"data.accumulate = {cfg.data.accumulate} with model.batchnorm = 'train': "
                f"BatchNorm normalises each micro-batch of data.batch_size = "
                f"{cfg.data.batch_size} images by its own statistics, and updates its running "
                "statistics once per micro-batch, so the steps differ from those of one batch "
                "of data.batch_size x data.accumulate images (model.batchnorm = 'eval' gives "
                "that batch's steps up to rounding)",
                stacklevel=2,
            )

        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.net = build_network(cfg.model, load_pretrained=ckpt is None)
        # What predict_parts resizes inputs to (load_model sets the same).
        self.net.image_size = cfg.data.image_size
        try:
            features = build_features(
                cfg.features.kind,
                weights=cfg.features.weights,
                layers=cfg.features.layers,
                seed=cfg.features.seed,
                bgr_quirk=cfg.features.bgr_quirk,
                stride=cfg.features.stride,
            )
        except WeightsFileError as exc:  # weights of another network, or not a weight file
            raise ConfigError(f"features.weights: {exc}") from None
        self.features = features.to(self.device)
        self.autocast_dtype = AUTOCAST_DTYPES[cfg.precision]
        self.objective = SCOPSObjective(
            self.net,
            self.features.channels,
            cfg.features.normalize,
            cfg.seed + _BASIS_SEED,
            autocast_dtype=self.autocast_dtype,
        ).to(self.device)
        if network_option(cfg.channels_last, self.device.type):
            # Convolutions follow their weights' memory format: NHWC activations throughout.
            self.net.to(memory_format=torch.channels_last)
            self.features.to(memory_format=torch.channels_last)
        if network_option(cfg.compile, self.device.type):
            # In place (nn.Module.compile): parameter names, the state dict and the
            # checkpoints stay those of the plain network.
            self.net.compile()
        self.module = self.objective
        if self.proc.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = DistributedDataParallel(self.objective, device_ids=ids)

        o = cfg.optim
        backbone = list(self.net.backbone_parameters())
        if o.nested_param_repeats:
            backbone = nested_repeats(self.net)
        with warnings.catch_warnings():
            # The original's quirk, reproduced on purpose (optim.nested_param_repeats).
            warnings.filterwarnings("ignore", message=".*duplicate parameters.*")
            self.net_optimizer = torch.optim.SGD(
                [
                    {"params": backbone, "lr_mult": 1.0},
                    {"params": list(self.net.head_parameters()), "lr_mult": o.head_lr_mult},
                ],
                lr=o.lr,
                momentum=o.momentum,
                weight_decay=o.weight_decay,
                # Repeated parameters need the one-tensor-at-a-time update the original got:
                # the multi-tensor path (torch's default on GPUs) does not chain repeats.
                foreach=False if o.nested_param_repeats else None,
            )
        #: Each trained network parameter once (the optimiser may list some repeatedly).
        self.net_parameters = list(
            dict.fromkeys(p for g in self.net_optimizer.param_groups for p in g["params"])
        )
        self.basis_optimizer = torch.optim.SGD(
            [self.objective.basis],
            lr=o.basis_lr,
            momentum=o.basis_momentum,
            weight_decay=o.basis_weight_decay,
        )
        # float16's range: gradients below 6e-8 would flush to zero in its backward. A
        # disabled scaler passes everything through unchanged. The loss weights (up to 1e4)
        # make the total hundreds: at torch's initial scale 2^16 the float16 backward
        # overflowed in the demo's first 6 steps (skipped), and the scale settled at 2^9-2^10.
        self.scaler = torch.amp.GradScaler(
            self.device.type, init_scale=2.0**10, enabled=cfg.precision == "float16"
        )

        #: (train, test) of the evaluation at the end, built now: a mistake in
        #: `evaluation.*` stops the run before its first step, not after its last.
        self.evaluation_sets = None
        if dataset is None or cfg.evaluation.enabled:
            from scops_fast.train.evaluation import evaluation_sets

            with distributed.local_rank_zero_first(self.proc):  # --saliency auto's maps
                if dataset is None:
                    dataset = build_dataset(cfg.data)
                if cfg.evaluation.enabled:
                    self.evaluation_sets = evaluation_sets(cfg)
        self.dataset = dataset
        # Only now, with everything the run needs found: a bad backend, data root or
        # weight path leaves no empty run folder behind.
        self.order = GlobalBatchOrder(
            len(self.dataset),
            cfg.data.batch_size,
            cfg.seed,
            self.proc.rank,
            self.proc.world_size,
            accumulate=cfg.data.accumulate,
        )
        if self.proc.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if ckpt is None and self.checkpoint_path.exists():
                warnings.warn(
                    f"{self.checkpoint_path} exists and will be overwritten (pass resume=True / "
                    "--resume to continue it)",
                    stacklevel=2,
                )
        self.warp_generator = torch.Generator().manual_seed(cfg.seed + _WARP_SEED)
        self.jitter_generator = torch.Generator().manual_seed(cfg.seed + _JITTER_SEED)
        # Drawn for all images of a step, so that accumulated micro-batches get the draws
        # of the one large batch they stand for.
        step_images = self.order.step_images
        self.warps = GlobalBatchWarps(
            cfg.warp, cfg.data.image_size, step_images, self.warp_generator
        )
        self.jitter = GlobalBatchColorJitter(cfg.jitter, step_images, self.jitter_generator)
        self.step = 0
        #: Seconds spent in the training loop, over all sessions of the run.
        self.train_seconds = 0.0
        #: Data set indices found unreadable and skipped (replaced by the next readable
        #: item) so far in this run, resumed sessions included.
        self.skipped: set[int] = set()
        self.evaluation: dict | None = None
        #: The step this run last saved or resumed from (None: none yet). Not the file on
        #: disk: --overwrite leaves the earlier run's checkpoint there until the first save.
        self.saved_step: int | None = None
        if ckpt is not None:
            self.load_state_dict(ckpt)

    # ------------------------------------------------------------------ one step
    def compute_losses(
        self, batch: dict, *, source_points=None, jittered=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted total, the five unweighted losses) of one local batch (a micro-batch,
        with gradient accumulation: `train_step` cuts the step's batch and draws).

        source_points (B, 25, 2) and jittered (B, 3, H, W) images in [0, 1] replace this
        step's random warp and colour jitter when given (their draws are then skipped):
        to replay another implementation's step, e.g. the original's, whose jittered
        network input `images_cj` is `(images_cj + CAFFE_MEAN_RGB) / 255` here."""
        cfg, backend = self.cfg, self.cfg.loss.backend
        # The network's dtype: float32, or float64 for a trainer built under
        # torch.set_default_dtype(torch.float64), as the tests build one to compare a step
        # with the original's free of float32 rounding.
        images = batch["img"].to(self.device, self.objective.basis.dtype)
        size = images.shape[-2:]
        if tuple(size) != (cfg.data.image_size,) * 2:
            raise ValueError(
                f"data set images are {tuple(size)}, the config says data.image_size = "
                f"{cfg.data.image_size}"
            )
        # The frozen features first, while no activation of the network is alive: their
        # transient buffers (VGG-19's 256x256 maps) then do not add to the step's peak.
        feats = self._features(images)
        local = self.order.local_slice()
        if source_points is None:
            source_points = self.warps.draw(local)
        source_points = torch.as_tensor(source_points).to(self.device)
        if jittered is None:
            jittered = self.jitter(images, local)
        jittered = torch.as_tensor(jittered).to(self.device, images.dtype)
        # Warped in normalised space: zeros padding there is the mean colour.
        normalized = self.net.normalize(jittered)
        if cfg.warp.grid_solve == "float32":
            grid = tps_grid(source_points, *size, solve="float32").to(normalized.dtype)
            warped = F.grid_sample(
                normalized, grid, padding_mode=cfg.warp.padding, align_corners=True
            )
        else:
            warped = tps_warp(
                normalized, source_points, padding_mode=cfg.warp.padding, backend=backend
            )
        logits, logits_warped, basis = self.module(self.net.normalize(images), warped)
        # Under autocast the logits come in bfloat16 or float16. Every loss takes them in
        # the weights' dtype: fed bfloat16 the four losses' values and gradients were off by
        # 2e-3 to 8e-3, fed the same values in float32 by 1e-6 at most
        # (benchmarks/loss_precision.py; docs/training.md, `precision`). A no-op
        # without autocast.
        pred = upsample_logits(logits.to(images.dtype), size)
        pred_warped = upsample_logits(logits_warped.to(images.dtype), size)

        # The original divides by B twice, B the images of a step (with accumulation too:
        # a sum over images divided by a constant accumulates exactly); scaled so that the
        # mean over ranks and micro-batches of the local losses equals the loss of the
        # step's batch (divided by B once for "per_image").
        local_batch = images.shape[0]
        con = losses.concentration_loss(pred, backend=backend) * (
            local_batch
            if cfg.loss.concentration_reduction == "per_image"
            else local_batch / self.order.step_images
        )
        eqv, lmeqv = losses.equivariance_losses(
            pred, pred_warped, source_points, padding_mode=cfg.warp.logits_padding, backend=backend
        )
        sem = self._semantic_loss(feats, batch, pred, basis)
        orth = losses.orthonormal_loss(basis)
        terms = torch.stack((con, eqv, lmeqv, sem, orth))
        w = cfg.loss
        total = (
            w.concentration * con
            + w.equivariance * eqv
            + w.landmark_equivariance * lmeqv
            + w.semantic * sem
            + w.orthonormal * orth
        )
        return total, terms

    def _features(self, images) -> list[torch.Tensor]:
        with autocast(images.device.type, self.autocast_dtype):
            feats = self.features(images)  # frozen: computed without a graph
        # Back to the losses' dtype, as the logits (no-op without autocast).
        feats = [f.to(images.dtype) for f in feats]
        if self.cfg.features.normalize:
            feats = [F.normalize(f, dim=1) for f in feats]
        return feats

    def _semantic_loss(self, feats, batch, pred, basis) -> torch.Tensor:
        cfg = self.cfg
        saliency = None
        if cfg.features.saliency:
            if "saliency" not in batch:
                raise KeyError(
                    "features.saliency is on but the data set items have no 'saliency'; "
                    "set features.saliency to false"
                )
            saliency = batch["saliency"].to(self.device, pred.dtype)
        backend = cfg.loss.backend
        if cfg.loss.semantic_form == "lowres":
            return losses.semantic_consistency_loss_lowres(
                feats, pred, basis, saliency, backend=backend
            )
        full = torch.cat([upsample_logits(f, pred.shape[-2:]) for f in feats], 1)
        if saliency is not None:
            full = full * saliency[:, None]
        return losses.semantic_consistency_loss(full, pred, basis, backend=backend)

    def train_step(self, batch: dict, **replay) -> torch.Tensor:
        """One optimisation step on this rank's images of the step (data.accumulate
        micro-batches, one after the other, as `batches` gives them); returns the logged
        values (total, five losses), means over the micro-batches. `replay`:
        source_points, jittered, as `compute_losses` takes them, for all of the step."""
        o = self.cfg.optim
        # Last step's gradients are dropped before the forward, not after it: alive
        # through it they would add the network's size to the step's peak.
        self.net_optimizer.zero_grad(set_to_none=True)
        self.basis_optimizer.zero_grad(set_to_none=True)
        micro_batches = self._micro_batches(batch, replay)
        logged = []
        for i, (micro, draws) in enumerate(micro_batches):
            # DDP all-reduces in the last micro-batch's backward only, the local sums.
            syncs = i == len(micro_batches) - 1 or not self.proc.distributed
            with contextlib.nullcontext() if syncs else self.module.no_sync():
                total, terms = self.compute_losses(micro, **draws)
                if self.cfg.release_heap and self.device.type == "cpu":
                    release_free_heap()  # the forward's freed transients, before the backward
                # Each loss is a mean over the micro-batch's images: the mean over the
                # micro-batches is the loss of the step's batch, and so are the gradients.
                self.scaler.scale(total / len(micro_batches)).backward()
            logged.append(torch.cat((total.detach()[None], terms.detach())))
        # Clipping sees the true gradients (a no-op without the float16 scaler).
        self.scaler.unscale_(self.net_optimizer)
        self.scaler.unscale_(self.basis_optimizer)
        if o.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.net_parameters, o.grad_clip)
        if o.basis_grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([self.objective.basis], o.basis_grad_clip)
        lr = poly_lr(o.lr, self.step, self.cfg.steps, o.poly_power)
        for group in self.net_optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        # With the float16 scaler, a step whose gradients overflowed is skipped (both
        # optimisers) and the scale lowered; it still counts as a step, as its data was used.
        self.scaler.step(self.net_optimizer)
        self.scaler.step(self.basis_optimizer)
        self.scaler.update()
        self.step += 1
        return torch.stack(logged).mean(0)

    def _micro_batches(self, batch: dict, replay: dict) -> list[tuple[dict, dict]]:
        """(micro-batch, its draws) pairs of a step, for `compute_losses`. The warps and
        colour jitter are drawn once for the step's images, so that accumulated
        micro-batches get the draws of the one batch they stand for."""
        draws = dict(replay)
        positions = self.order.local_positions()
        if draws.get("source_points") is None:
            draws["source_points"] = self.warps.draw(positions)
        if draws.get("jittered") is None:
            images = batch["img"].to(self.device, self.objective.basis.dtype, non_blocking=True)
            # Copied to the GPU once: compute_losses' copy of the images is then a no-op.
            batch = {**batch, "img": images}
            draws["jittered"] = self.jitter(images, positions)
        parts = self.cfg.data.accumulate
        if parts == 1:
            return [(batch, draws)]
        rows = len(batch["img"])
        if rows != len(positions):
            raise ValueError(
                f"batch: expected the step's {len(positions)} images (data.accumulate = {parts} "
                f"micro-batches of {self.order.local_batch}), got {rows}"
            )
        n = self.order.local_batch
        return [
            (
                {k: v[i * n : (i + 1) * n] for k, v in batch.items()},
                {k: torch.as_tensor(v)[i * n : (i + 1) * n] for k, v in draws.items()},
            )
            for i in range(parts)
        ]

    # ------------------------------------------------------------------ the loop
    def train(self, until: int | None = None) -> dict[str, float]:
        """Trains up to step `until` (default: the config's `steps`), checkpointing every
        `checkpoint_every` steps and at the end; returns the last logged values."""
        cfg = self.cfg
        stop = cfg.steps if until is None else min(int(until), cfg.steps)
        log = RunLog(
            self.out_dir,
            start_step=self.step,
            total_steps=cfg.steps,
            log_every=cfg.log_every,
            enabled=self.proc.is_main,
            progress=self.progress,
            tensorboard=self.tensorboard,
        )
        self.module.train()
        running = torch.zeros(len(LOG_NAMES), dtype=torch.float64, device=self.device)
        count, last = 0, {}
        start, clock = self.step, time.perf_counter()
        # Installed until the checkpoint is written: under torchrun, the agent sends SIGTERM
        # to every worker once one has exited, which must not cut rank 0's save short.
        stopping = GracefulStop()
        try:
            loader = batches(
                self.dataset,
                self.order,
                self.step,
                stop,
                cfg.data.num_workers,
                pin_memory=self.device.type == "cuda",
            )
            try:
                for batch in loader:
                    # Before the step, so that every rank agrees (in one collective) to stop
                    # after the same step; the step before it was logged and is checkpointed.
                    if stopping.should_stop(self.proc, self.stop_group):
                        break
                    self.skipped |= substituted(self.order.indices(self.step), batch)
                    running += self.train_step(batch).double()
                    count += 1
                    log.advance()
                    at_log = self.step % cfg.log_every == 0 or self.step == stop
                    at_save = self.step % cfg.checkpoint_every == 0 and self.step != stop
                    if at_log:
                        mean = distributed.mean_over_ranks(running / count, self.proc).tolist()
                        last = dict(zip(LOG_NAMES, mean, strict=True))
                        last["lr"] = self.net_optimizer.param_groups[0]["lr"]
                        self.skipped |= skipped_indices(self.dataset)
                        last["skipped_images"] = len(self.skipped)
                        log.record(self.step, last)
                        running.zero_()
                        count = 0
                    if at_log or at_save:
                        self._check_finite()
                    if at_save:
                        self.train_seconds += time.perf_counter() - clock
                        clock = time.perf_counter()
                        self.save_checkpoint()
            finally:
                del loader  # its reader processes end here, not when garbage is collected
                log.close()
                # A finished run resumed trains nothing; its set-up time is not training time.
                if self.step > start:
                    self.train_seconds += time.perf_counter() - clock
            self._report_skipped()
            self._check_finite()
            self.save_checkpoint()
            if stopping.stopped:  # no rank exits (and so starts torchrun's teardown) before
                distributed.barrier(self.proc, self.stop_group)  # rank 0 has saved
        except BaseException:
            stopping.restore(deliver=False)
            raise
        stopping.restore()
        if stopping.stopped:
            raise TrainingInterrupted(self.step, self.checkpoint_path, stopping.stopped)
        if self.proc.is_main and self.step == cfg.steps:
            if not last:  # a finished run resumed: its last logged losses
                last = _last_losses(self.out_dir)
            self._finish(last, session_steps=self.step - start)
        return last

    def _check_finite(self) -> None:
        """Raises TrainingDiverged where a trained weight is NaN or infinite, before it can
        be saved over the last finite checkpoint. The weights, not the losses: a float16
        step whose gradients overflow is skipped by the scaler with the weights intact. The
        ranks hold the same weights, so they all stop at the same step."""
        trained = [*self.net_parameters, self.objective.basis]
        if bool(torch.stack([torch.isfinite(p.detach()).all() for p in trained]).all()):
            return
        raise TrainingDiverged(self.step, self.checkpoint_path, self.saved_step)

    def _report_skipped(self) -> None:
        """The count and the first files, as one stderr line of the command's own (a Python
        warning would vanish under -W ignore); metrics.json lists every file."""
        self.skipped |= skipped_indices(self.dataset)
        if self.skipped and self.proc.is_main:
            names = describe_items(self.dataset, sorted(self.skipped)[:10])
            more = ", ..." if len(self.skipped) > 10 else ""
            print(
                f"train: skipped {len(self.skipped)} unreadable image(s) of the data set "
                f"{'in this run' if self.step == self.cfg.steps else 'so far'} "
                f"({', '.join(names)}{more}); each was replaced by the next readable one",
                file=sys.stderr,
                flush=True,
            )

    def _finish(self, last: dict, session_steps: int = 0) -> None:
        """Evaluation, metrics.json and report of a finished run (main process only)."""
        from scops_fast.train.evaluation import (
            evaluate_network,
            run_metrics,
            write_metrics,
        )
        from scops_fast.train.report import write_training_report

        if self.cfg.evaluation.enabled:
            self.evaluation = evaluate_network(
                self.net, self.cfg, self.evaluation_sets, progress=self.progress
            )
        self.metrics = run_metrics(
            self.cfg,
            steps=self.step,
            train_seconds=self.train_seconds,
            final_losses=last,
            evaluation=self.evaluation,
            world_size=self.proc.world_size,
            device=str(self.device),
        )
        self.metrics["training"]["skipped_files"] = describe_items(
            self.dataset, sorted(self.skipped)
        )
        write_metrics(self.out_dir, self.metrics)
        if self.cfg.report:
            write_training_report(
                self.out_dir,
                self.net,
                self._picture_dataset(),
                metrics=self.metrics,
                notes=run_summary(self.cfg, self.proc.world_size),
            )

    def _picture_dataset(self):
        """The report's images: the held-out test set when there is an evaluation."""
        if self.evaluation_sets is None:
            mark_unreadable(self.dataset, self.skipped)  # named once, in training
            return self.dataset
        return self.evaluation_sets[1]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "model": self.net.state_dict(),
            "basis": self.objective.basis.detach().clone(),
            "optimizer": {
                "net": self.net_optimizer.state_dict(),
                "basis": self.basis_optimizer.state_dict(),
            },
            "rng": {
                "torch": torch.get_rng_state(),
                # The run's GPU alone: get_rng_state_all would start a CUDA context on
                # every visible GPU (the other ranks' too), and a resume on fewer GPUs
                # could not restore that list. Nothing draws from it today (every draw
                # is from the CPU generators above); kept for what may.
                "cuda": torch.cuda.get_rng_state(self.device)
                if self.device.type == "cuda"
                else None,
                "warp": self.warp_generator.get_state(),
                "jitter": self.jitter_generator.get_state(),
                "data_order": self.order.state(self.step),
            },
            "skipped_indices": sorted(self.skipped),
            # The float16 loss scale and its growth counter ({} when there is no scaler).
            "grad_scaler": self.scaler.state_dict(),
            "world_size": self.proc.world_size,
            "torch_version": str(torch.__version__),  # a plain str: loads weights_only
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["model"])
        with torch.no_grad():
            self.objective.basis.copy_(ckpt["basis"])
        self.net_optimizer.load_state_dict(ckpt["optimizer"]["net"])
        self.basis_optimizer.load_state_dict(ckpt["optimizer"]["basis"])
        if ckpt.get("grad_scaler"):
            self.scaler.load_state_dict(ckpt["grad_scaler"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        cuda_state = cuda_rng_state_for(rng.get("cuda"), self.device)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, self.device)
        self.warp_generator.set_state(rng["warp"])
        self.jitter_generator.set_state(rng["jitter"])
        self.step = int(ckpt["step"])
        self.saved_step = self.step
        self.skipped = {int(i) for i in ckpt.get("skipped_indices", ())}
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))

    def save_checkpoint(self) -> None:
        if self.proc.is_main:  # the ranks hold the same weights
            save_atomic(self.state_dict(), self.checkpoint_path)
        self.saved_step = self.step


def run_summary(cfg: Config, world_size: int) -> str:
    m, d, f = cfg.model, cfg.data, cfg.features
    stand_in = " (a stand-in for ImageNet VGG-19: see scops_fast.models.vgg)"
    return (
        f"Config {cfg.name!r}: {m.arch} with K={m.num_parts} parts, {d.image_size}x{d.image_size} "
        f"images from {d.dataset!r}, global batch {d.batch_size}"
        + (f" x {d.accumulate} accumulated" if d.accumulate > 1 else "")
        + f" on {world_size} process(es), "
        f"{cfg.steps} steps, seed {cfg.seed}; semantic features {f.kind!r}"
        + (stand_in if f.kind != "vgg19" else "")
        + (f"; network and features in {cfg.precision}" if cfg.precision != "float32" else "")
        + "."
    )


def _last_losses(out_dir) -> dict:
    from scops_fast.train.progress import read_metrics

    records = read_metrics(out_dir)
    if not records:
        return {}
    return {k: v for k, v in records[-1].items() if k in (*LOG_NAMES, "lr", "skipped_images")}


#: The settings a resumed run takes from the command; every other one is the checkpoint's.
RESUME_SETTABLE = (
    "steps",
    "loss.backend",
    "model.activation_checkpointing",
    "compile",
    "channels_last",
)


def _resumed_config(ckpt: dict, requested: Config) -> tuple[Config, str]:
    """The checkpoint's config with RESUME_SETTABLE taken from `requested` (the backend and
    checkpointing change no number beyond rounding, and a run stopped for lack of memory may
    go on with checkpointing on), and the line that says what was ignored and changed.

    A new `steps` is a new schedule horizon: from the checkpoint's step on, the network's
    learning rate is the one a run of the new length has there (the poly schedule is a
    function of step / steps). The two alternatives were worse: keeping the old horizon
    leaves a learning rate of 0 past it, and restarting the schedule from the base rate is a
    warm restart, another experiment."""
    saved = config_from_dict(ckpt["config"], source="the checkpoint's config")
    step = int(ckpt["step"])
    if requested.steps < step:
        raise ConfigError(f"steps = {requested.steps} is below the checkpoint's step {step}")
    flat_requested = requested.to_dict()
    resumed = saved.replace({k: dotted_value(flat_requested, k) for k in RESUME_SETTABLE})
    ignored = _differing_fields(resumed.to_dict(), flat_requested)
    saved_flat = saved.to_dict()
    changed = [
        f"{k} {dotted_value(saved_flat, k)} -> {dotted_value(flat_requested, k)}"
        for k in RESUME_SETTABLE
        if dotted_value(saved_flat, k) != dotted_value(flat_requested, k)
    ]
    note = f"resuming at step {step} with the checkpoint's settings"
    if ignored:
        note += f"; ignored (the checkpoint's kept): {', '.join(ignored)}"
    if changed:
        note += f"; changed: {', '.join(changed)}"
    if saved.steps != requested.steps and step > 0:
        o = saved.optim
        before = poly_lr(o.lr, step, saved.steps, o.poly_power)
        after = poly_lr(o.lr, step, requested.steps, o.poly_power)
        note += (
            f" (the learning rate follows the {requested.steps}-step schedule from here: "
            f"{before:.4g} -> {after:.4g} at step {step})"
        )
    return resumed, note


def _differing_fields(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in a:
        if isinstance(a[key], dict) and isinstance(b.get(key), dict) and key != "args":
            out += _differing_fields(a[key], b[key], f"{prefix}{key}.")
        elif a[key] != b.get(key):
            out.append(f"{prefix}{key}")
    return out
