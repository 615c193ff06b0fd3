"""The offline universal-detection benchmark: real photographs from registry packages, split by source, and
fakes from generators of several mechanisms that train and run on a CPU, in the Wang et al. layout.

Layout (Wang et al., CVPR 2020)::

    OUT/training/<family>/{0_real,1_fake}/*.{jpg,png}     ONE GAN family (gan_progressive, as the paper's ProGAN)
    OUT/validation/<family>/{0_real,1_fake}/*.{jpg,png}   the same family, validation sources (calibration)
    OUT/testing/<family>/{0_real,1_fake}/*.{jpg,png}      every family, testing-only sources
    OUT/dataset.json      config, sources (package, version, licence, split), photos (sha256), generators,
                          counts, spectra, trivial detectors, notes, one record per file (deterministic for a seed)
    OUT/spectra.png       mean log-spectrum, fake minus real, per testing family
    OUT/build_info.json   timings (per stage and per family) and machine, kept out of dataset.json

The question (the paper's): trained on one GAN, does a detector catch generators it never saw, and does it leave
real photographs from sources it never saw alone?

Modules, one job each: ``photos`` (the photo table and fetching from Debian, PyPI and npm), ``crops`` (crops and
the split by source), ``families`` (the one registry of generator families), ``networks`` (their networks),
``train_generators`` (training, cache, parallel processes), ``generate`` (sampling), ``postprocess`` (the chain
both classes go through), ``reports`` (spectra, trivial detectors), ``build`` (the build), ``config`` (profiles),
``cli``, and ``mosaics`` (photo-sized test images composed from a build's tiles, for measuring coverage).

Example::

    python -m training.benchmark --out artifacts/data/benchmark            # full: 128 px, ~20 min on 2 cores
    python -m training.benchmark --out /tmp/bench-small --small            # tests: every family, ~1 min
"""

from fmdetect.training.benchmark.build import DATASET_FILE, build_dataset, is_complete, read_manifest
from fmdetect.training.benchmark.config import BuildConfig, Profile

__all__ = ["DATASET_FILE", "BuildConfig", "Profile", "build_dataset", "is_complete", "read_manifest"]
