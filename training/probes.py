"""Spectral probes: what a trained detector responds to, measured on the real images of a test split.

Each probe changes the split's real images in one controlled way, scores them with the checkpoint (its centre
window, its threshold) and reports the share called fake and the AP of the changed reals against the unchanged
ones (0.5: the change is invisible to the detector; 1: it separates them perfectly):

- ``transplant`` (one row per generator family): every real of the family's folder gets the family's mean
  Fourier magnitude ratio, fake over real, per frequency and colour channel (its phase, so its content and local
  structure, stays its own). The row beside it scores the family's own fakes. A transplant flagged as often as
  the fakes means the detector reads the family's average spectrum; far less means it reads something that
  average does not hold (phase-coherent structure: edges, textures, periodic patterns in place).
- ``lowpass R``: every Fourier coefficient above radius ``R`` cycles/pixel zeroed (0.5 = Nyquist): a pure deficit
  of high frequencies, as an autoencoder's blur leaves.
- ``resample F``: a 2x box downscale, then a 2x upscale with filter ``F`` (nearest, bilinear, bicubic): the trace
  of a decoder's upsampling, without any generator.

The generic probes run on the distinct reals of the split (folders that share reals are counted once). Outputs
``probes.json`` and ``probes.md`` in ``--out``.

Example::

    python -m training.probes --checkpoint detectors/default --data artifacts/data/benchmark \\
        --out detectors/default/probes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fmdetect.core.fft import radial_frequency
from fmdetect.core.metadata import Coverage
from fmdetect.core.scoring import decide
from fmdetect.training import metrics as M
from fmdetect.training.checkpoint import load_detector, with_coverage
from fmdetect.training.data import RealFakeDataset
from fmdetect.training.distributed import resolve_device
from fmdetect.training.model import Detector
from fmdetect.training.steps import predict

logger = logging.getLogger(__name__)

PROBES_JSON = "probes.json"
PROBES_MD = "probes.md"
LOWPASS_RADII = (0.25, 0.35)
UPSAMPLERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
BATCH = 64


@dataclass(frozen=True)
class ProbeRow:
    """One probe's figures: ``flagged`` = share called fake at the threshold, ``ap_vs_reals`` = AP of the probed
    images (positives) against the unchanged reals (negatives)."""

    probe: str
    family: str | None
    n: int
    flagged: float
    mean_prob_fake: float
    ap_vs_reals: float | None


# ------------------------------------------------------------------------------------------------ transforms


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _spectrum(images: np.ndarray) -> np.ndarray:
    """The 2-D FFT of (N, H, W, 3) images over the spatial axes, complex128."""
    return np.fft.fft2(images.astype(np.float64), axes=(1, 2))


def magnitude_ratio(fakes: np.ndarray, reals: np.ndarray) -> np.ndarray:
    """Mean |FFT| of ``fakes`` over mean |FFT| of ``reals``, (H, W, 3); the DC term is left at 1 (brightness)."""
    eps = 1e-8
    ratio = (np.abs(_spectrum(fakes)).mean(axis=0) + eps) / (np.abs(_spectrum(reals)).mean(axis=0) + eps)
    ratio[0, 0, :] = 1.0
    return ratio


def apply_ratio(images: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """``images`` with every Fourier coefficient multiplied by ``ratio`` (real, so each phase is kept)."""
    return _to_uint8(np.real(np.fft.ifft2(_spectrum(images) * ratio[None], axes=(1, 2))))


def lowpass(images: np.ndarray, radius: float) -> np.ndarray:
    """``images`` with the coefficients above ``radius`` cycles/pixel zeroed."""
    keep = (0.5 * radial_frequency(*images.shape[1:3]) <= radius).astype(np.float64)  # cycles/pixel
    return apply_ratio(images, np.repeat(keep[:, :, None], 3, axis=2))


def resample(images: np.ndarray, upsampler: Image.Resampling) -> np.ndarray:
    """A 2x box downscale, then a 2x upscale with ``upsampler``, image by image."""
    out = []
    for image in images:
        pil = Image.fromarray(image)
        small = pil.resize((max(1, pil.width // 2), max(1, pil.height // 2)), Image.Resampling.BOX)
        out.append(np.asarray(small.resize(pil.size, upsampler)))
    return np.stack(out)


# ----------------------------------------------------------------------------------------------------- probes


def score(model: Detector, images: np.ndarray, device: torch.device) -> np.ndarray:
    """prob_fake of (N, H, W, 3) uint8 centre windows, through the evaluation's ``predict``."""
    items = [(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), torch.tensor(0.0), "") for x in images]
    return predict(model, items, BATCH, device, desc="probe").probs


def _row(
    probe: str, family: str | None, probs: np.ndarray, real_probs: np.ndarray | None, threshold: float
) -> ProbeRow:
    ap = None
    if real_probs is not None:
        labels = np.concatenate([np.ones(len(probs)), np.zeros(len(real_probs))]).astype(np.int64)
        ap = M.average_precision(np.concatenate([probs, real_probs]), labels)
    return ProbeRow(probe, family, len(probs), float(decide(probs, threshold).mean()), float(probs.mean()), ap)


def windows_by_family(dataset: RealFakeDataset) -> dict[str, dict[int, np.ndarray]]:
    """{family: {label: (N, H, W, 3) centre windows}} of the split, in file order."""
    grouped: dict[str, dict[int, list[np.ndarray]]] = {}
    for index, sample in enumerate(dataset.samples):
        grouped.setdefault(sample.generator, {0: [], 1: []})[sample.label].append(dataset.load(index))
    return {family: {label: np.stack(w) for label, w in by_label.items() if w} for family, by_label in grouped.items()}


def distinct(images: Sequence[np.ndarray]) -> np.ndarray:
    """The images that differ in content, first occurrence kept."""
    seen: set[str] = set()
    kept = []
    for image in images:
        digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            kept.append(image)
    return np.stack(kept)


def run_probes(
    checkpoint: Path,
    data: Path,
    split: str = "testing",
    lowpass_radii: Sequence[float] = LOWPASS_RADII,
    upsamplers: Sequence[str] = tuple(UPSAMPLERS),
    device: str = "auto",
) -> dict:
    """Every probe on ``data/split``; returns ``probes.json``'s content."""
    target = resolve_device(device)
    model = with_coverage(load_detector(checkpoint), Coverage()).to(target)
    threshold = float(model.metadata.threshold.value)
    dataset = RealFakeDataset(data, split, model.metadata.input_size, train=False)
    families = windows_by_family(dataset)
    rows: list[ProbeRow] = []
    real_scores: dict[str, np.ndarray] = {}  # folders that share their reals score them once
    for family, by_label in sorted(families.items()):
        if 0 not in by_label or 1 not in by_label:
            raise ValueError(f"family {family!r} needs both real and fake images in {dataset.root}")
        reals, fakes = by_label[0], by_label[1]
        key = hashlib.sha256(reals.tobytes()).hexdigest()
        if key not in real_scores:
            real_scores[key] = score(model, reals, target)
        real_probs = real_scores[key]
        logger.info("probing %s (%d reals, %d fakes)", family, len(reals), len(fakes))
        rows.append(_row("fakes", family, score(model, fakes, target), real_probs, threshold))
        transplanted = apply_ratio(reals, magnitude_ratio(fakes, reals))
        rows.append(_row("transplant", family, score(model, transplanted, target), real_probs, threshold))
    reals = distinct([image for by_label in families.values() for image in by_label.get(0, [])])
    real_probs = score(model, reals, target)
    rows.append(_row("reals", None, real_probs, None, threshold))
    generic: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = [
        *((f"lowpass {r:g}", lambda x, r=r: lowpass(x, r)) for r in lowpass_radii),
        *((f"resample {u}", lambda x, u=u: resample(x, UPSAMPLERS[u])) for u in upsamplers),
    ]
    for name, change in generic:
        logger.info("probing %s on %d distinct reals", name, len(reals))
        rows.append(_row(name, None, score(model, change(reals), target), real_probs, threshold))
    return M.json_safe(
        {
            "checkpoint": str(checkpoint),
            "data": str(dataset.root),
            "threshold": threshold,
            "input_size": list(model.metadata.input_size),
            "rows": [asdict(r) for r in rows],
        }
    )


def markdown(report: dict) -> str:
    """Two tables: the families (fakes beside their transplant) and the generic probes."""
    by_family: dict[str, dict[str, dict]] = {}
    generic = []
    for row in report["rows"]:
        if row["family"] is None:
            generic.append(row)
        else:
            by_family.setdefault(row["family"], {})[row["probe"]] = row

    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    def ap(value: float | None) -> str:
        return "" if value is None else f"{value:.3f}"

    lines = [
        f"# Spectral probes of `{report['checkpoint']}` on `{report['data']}`",
        "",
        f"Threshold {report['threshold']:.4g}; centre window {report['input_size'][0]} x {report['input_size'][1]}.",
        "",
        "| probed family | fakes flagged (%) | transplant flagged (%) | fakes AP vs reals | transplant AP vs reals |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for family, rows in sorted(by_family.items()):
        fakes, transplant = rows["fakes"], rows["transplant"]
        lines.append(
            f"| {family} | {pct(fakes['flagged'])} | {pct(transplant['flagged'])} | {ap(fakes['ap_vs_reals'])} "
            f"| {ap(transplant['ap_vs_reals'])} |"
        )
    lines += ["", "| probe of the distinct reals | n | flagged (%) | AP vs reals |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['probe']} | {r['n']} | {pct(r['flagged'])} | {ap(r['ap_vs_reals'])} |" for r in generic]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.probes",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--data", required=True, type=Path, help="dataset root (Wang layout)")
    parser.add_argument("--out", required=True, type=Path, help="output directory for probes.json and probes.md")
    parser.add_argument("--split", default="testing", help="split folder under --data")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run_probes(args.checkpoint, args.data, args.split, device=args.device)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / PROBES_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (args.out / PROBES_MD).write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
