"""How much of an image to score: a detector's coverage sweep on the benchmark's mosaics, and the choice of coverage.

For every arrangement of ``training.benchmark.mosaics`` (whole, surround, one_tile), on the validation split and on
every testing family, ``training.evaluate --crops`` measures 1, 5 and 9 windows per image (``core.metadata.Coverage``,
max rule): mean AP, TPR at 5 % FPR, the share of reals called fake at the checkpoint's threshold and the model's
cost per image. The coverage is chosen on the validation arrangements only, by a fixed rule: the highest mean
AP over the arrangements, then the fewest windows within ``TOLERANCE`` of it. The testing
figures report what that choice gives on families the training never saw.

Writes ``OUT/coverage.json``, ``OUT/coverage.md`` and ``OUT/coverage.png``; each evaluation goes to
``WORK/<split>/`` and is reused when its configuration matches.

Example::

    python -m training.benchmark.mosaics --data artifacts/data/benchmark --out artifacts/data/mosaics
    python -m training.coverage --checkpoint detectors/default --mosaics artifacts/data/mosaics --out docs/coverage
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from fmdetect.training.benchmark.mosaics import ARRANGEMENTS
from fmdetect.training.evaluate import CONFIG_JSON, METRICS_JSON, EvalConfig, evaluate

logger = logging.getLogger(__name__)

CROPS = ("1", "5", "9")
TOLERANCE = 0.01
SPLITS = ("validation", "testing")


def _reusable(work: Path, config: EvalConfig) -> dict[str, Any] | None:
    """The metrics of an earlier evaluation in ``work`` of the same checkpoint, data, split and coverages."""
    try:
        earlier = json.loads((work / CONFIG_JSON).read_text())["evaluation"]
        metrics = json.loads((work / METRICS_JSON).read_text())
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None
    wanted = config.to_dict()
    same = all(Path(earlier[k]).resolve() == Path(wanted[k]).resolve() for k in ("checkpoint", "data"))
    same = same and earlier["split"] == wanted["split"] and earlier["coverages"] == wanted["coverages"]
    return metrics if same and "coverage" in metrics else None


def sweep(checkpoint: Path, mosaics: Path, work: Path, crops: tuple[str, ...] = CROPS) -> list[dict[str, Any]]:
    """One row per split, arrangement and coverage: AP, TPR at 5 % FPR, reals called fake, cost, AP per family."""
    rows = []
    for split in SPLITS:
        for arrangement in ARRANGEMENTS:
            name = f"{split}_{arrangement}"
            config = EvalConfig(
                checkpoint=checkpoint, data=mosaics, out=work / name, split=name, coverages=crops, plots=False
            )
            metrics = _reusable(config.out, config)
            if metrics is None:
                metrics = evaluate(config)
            else:
                logger.info("reusing the evaluation in %s", config.out)
            for row in metrics["coverage"]:
                rows.append({"split": split, "arrangement": arrangement, **row})
    return rows


def choose(rows: list[dict[str, Any]], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The coverage of the rule: the highest mean validation AP over the arrangements, then the fewest windows
    within ``tolerance`` of it."""
    means = {}
    for crops in sorted({r["crops"] for r in rows}):
        aps = [r["ap"] for r in rows if r["split"] == "validation" and r["crops"] == crops]
        means[crops] = sum(aps) / len(aps)
    best = max(means.values())
    chosen = min(c for c, ap in means.items() if ap >= best - tolerance)
    return {"crops": chosen, "top_k": 1, "validation_mean_ap": means, "tolerance": tolerance}


def markdown(rows: list[dict[str, Any]], choice: dict[str, Any]) -> str:
    lines = [
        "# Coverage sweep",
        "",
        "AP, TPR at 5 % FPR and the share of reals called fake at the checkpoint's threshold, in %; the model's cost"
        " per image (all its windows) relative to one window. Validation: the training family's validation split;"
        " testing: mean over every testing family.",
        "",
        "| split | arrangement | crops | AP | TPR@5%FPR | reals called fake | relative cost |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rel = "n/a" if r["relative_cost"] is None else f"{r['relative_cost']:.1f}x"
        lines.append(
            f"| {r['split']} | {r['arrangement']} | {r['crops']} | {100 * r['ap']:.1f} | {100 * r['tpr_at_fpr_5']:.1f}"
            f" | {100 * r['real_fpr_at_threshold']:.1f} | {rel} |"
        )
    means = ", ".join(f"{c}: {100 * ap:.1f}" for c, ap in choice["validation_mean_ap"].items())
    lines += [
        "",
        f"Mean validation AP over the arrangements by crops: {means}. Chosen by the rule (the fewest windows within "
        f"{choice['tolerance']} of the best): **{choice['crops']}**.",
    ]
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arrangement, color in zip(ARRANGEMENTS, ("tab:blue", "tab:orange", "tab:green")):
        for split, style in (("testing", "o-"), ("validation", "s--")):
            sel = [r for r in rows if r["split"] == split and r["arrangement"] == arrangement]
            ax.plot(
                [r["crops"] for r in sel], [r["ap"] for r in sel], style, color=color, label=f"{arrangement} ({split})"
            )
    ax.set(
        xlabel="windows scored per image (max rule)",
        ylabel="AP",
        ylim=(0.4, 1.02),
        title="Coverage: AP against windows per image",
    )
    ax.set_xticks(sorted({r["crops"] for r in rows}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.coverage",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--mosaics", required=True, type=Path, help="python -m training.benchmark.mosaics output")
    parser.add_argument("--out", required=True, type=Path, help="where coverage.{json,md,png} go")
    parser.add_argument("--work", type=Path, default=Path("artifacts/coverage"), help="the evaluations' folders")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        rows = sweep(args.checkpoint, args.mosaics, args.work)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    choice = choose(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(args.checkpoint), "mosaics": str(args.mosaics), "rows": rows, "choice": choice}
    (args.out / "coverage.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "coverage.md").write_text(markdown(rows, choice))
    plot(args.out / "coverage.png", rows)
    print(markdown(rows, choice))
    return 0


if __name__ == "__main__":
    sys.exit(main())
