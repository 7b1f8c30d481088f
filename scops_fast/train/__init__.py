"""Training system of SCOPS: config presets, the trainer, checkpoints, and the API
for using a trained model.

    from scops_fast.train import load_model, predict_parts
    model = load_model("runs/demo/checkpoint.pt")
    probs = predict_parts(model, images)        # (B, K+1, H, W), channel 0 background

Command line: `python -m scops_fast.train --config demo` (see `cli.py`).
"""

from scops_fast.train.config import Config, ConfigError, load_config, preset_names
from scops_fast.train.loading import build_network, load_model, predict_parts
from scops_fast.train.trainer import Trainer

__all__ = [
    "Config",
    "ConfigError",
    "Trainer",
    "build_network",
    "load_config",
    "load_model",
    "predict_parts",
    "preset_names",
]
