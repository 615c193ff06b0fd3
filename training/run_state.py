"""A training run's folder and resume state: the file names, the RNG states, atomic saves, what may change on a
resume, and the metric lines kept when one resumes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoint"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LAST_FILE = "last.pt"
BEST_FILE = "best.pt"
THRESHOLD_METHOD = "fpr_on_validation_real"
STATE_VERSION = 1
# Options that may differ between a run and its resumption: they do not change what an epoch computes.
RESUMABLE_CHANGES = frozenset({"data", "out", "epochs", "max_steps", "epoch_steps", "workers", "device", "amp"})


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save through a temporary file, so a crash never leaves a half-written state."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_state(path: Path) -> dict[str, Any]:
    """A ``last.pt`` / ``best.pt`` file: tensors and plain containers only (``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def check_resumable(saved: dict[str, Any], current: dict[str, Any], last: Path) -> None:
    """Raise ValueError when the configuration ``current`` changes an option that defines the training saved in
    ``last`` (whose configuration is ``saved``)."""
    changed = sorted(
        k for k in set(saved) | set(current) if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"{last} was trained with other options ({diff}); use the same "
            f"options, another --out, or --restart. Options that may change: {sorted(RESUMABLE_CHANGES)}"
        )


def trim_metrics(path: Path, epochs: int) -> None:
    """Keep the metric lines of the first ``epochs`` epochs (all of a finished state; none on a fresh start)."""
    lines = path.read_text().splitlines() if path.is_file() and epochs > 0 else []
    kept = [line for line in lines if json.loads(line)["epoch"] <= epochs]
    path.write_text("".join(line + "\n" for line in kept))
