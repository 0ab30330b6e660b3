"""The alphabet-as-task comparison as shipped: one results file, its README table and plot.

A comparison too long for one process runs as several ``innerloop compare --methods ...``
processes with the same settings (one per core); :func:`merge_reports` joins their
``results.json`` files into ``docs/results/compare.json``, refusing runs whose settings differ.
The README block between ``<!-- compare:start -->`` and ``<!-- compare:end -->`` is written
from that file (``--write``) and checked against it by the tests (``--check``), so the table
can never drift from the measured results. The WarpGrad paper's numbers sit beside ours.

    python -m innerloop_training.compare_report merge runs/a/results.json runs/b/results.json \\
        --out docs/results/compare.json
    python -m innerloop_training.compare_report readme --write README.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "results" / "compare.json"
# the same run with the inner loop innerloop used before the papers' (prototype head, Adam 1e-3)
VARIANT = REPO / "docs" / "results" / "compare-adam-proto.json"
FIGURE = REPO / "docs" / "figures" / "compare.png"
START, END = "<!-- compare:start -->", "<!-- compare:end -->"

# Flennerhag et al., "Meta-Learning with Warped Gradient Descent" (ICLR 2020), Omniglot with
# 25 pre-training alphabets, 20-way, 100 adaptation steps: final test accuracy (%).
PAPER_K25 = {"warp-leap": 83.6, "leap": 75.5, "ft": 76.4, "reptile": 70.8}
ORDER = ("warp-leap", "leap", "reptile", "ft", "no", "warp", "fomaml", "maml")


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from runs of the same protocol that each compared some of the methods."""
    if not reports:
        raise ValueError("nothing to merge")
    first = reports[0]
    merged = {**first, "results": {}, "methods": {}, "seconds": {}}

    def comparable(settings: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k != "methods"}

    for report in reports:
        for key in ("protocol", "test_alphabets", "pretrain_order"):
            if report.get(key) != first.get(key):
                raise ValueError(f"runs differ in {key}: cannot merge them")
        if comparable(report["settings"]) != comparable(first["settings"]):
            diff = sorted(
                k
                for k in set(report["settings"]) | set(first["settings"])
                if k != "methods" and report["settings"].get(k) != first["settings"].get(k)
            )
            raise ValueError(f"runs differ in settings {diff}: cannot merge them")
        for section in ("results", "methods", "seconds"):
            for method, value in report.get(section, {}).items():
                if section == "results" and method in merged["results"]:
                    raise ValueError(f"method {method!r} appears in two runs")
                merged[section][method] = value
    merged["settings"] = {
        **first["settings"],
        "methods": [m for m in ORDER if m in merged["results"]],
    }
    totals = [float(r.get("total_seconds", 0.0)) for r in reports]
    merged["total_seconds"] = round(max(totals), 1)  # the runs ran side by side
    merged["cpu_seconds"] = round(sum(totals), 1)
    merged["runs"] = len(reports)
    return merged


def _methods(report: dict[str, Any]) -> list[str]:
    return [m for m in ORDER if m in report["results"]]


def _k(report: dict[str, Any]) -> str:
    ks = {k for per_k in report["results"].values() for k in per_k}
    return max(ks, key=int)


def readme_block(
    report: dict[str, Any],
    figure: str = "docs/figures/compare.png",
    variant: dict[str, Any] | None = None,
) -> str:
    """The README table: ours (with both 95% intervals) beside the paper, at the largest k;
    ``variant`` (the same protocol with another inner loop) adds a column of its own."""
    k = _k(report)
    s = report["settings"]
    lines = [
        START,
        "| method | final accuracy, % [95% Wilson, drawings] | [95% t, alphabets] | AUC % "
        "| WarpGrad paper, k=25 | pre-training + test, min |"
        + (" variant: final accuracy, % [95% Wilson] |" if variant else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if variant else ""),
    ]
    for method in _methods(report):
        r = report["results"][method][k]
        low, high = r["ci95_queries"]
        t_low, t_high = r["ci95_alphabets"]
        paper = PAPER_K25.get(method)
        minutes = float(report["seconds"][method][k]) / 60
        lines.append(
            f"| {method} | {100 * r['final_accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}] "
            f"| [{100 * t_low:.1f}, {100 * t_high:.1f}] | {100 * r['auc']:.1f} "
            f"| {'' if paper is None else f'{paper:.1f}'} | {minutes:.0f} |"
            + (f" {_variant_cell(variant, method, k)} |" if variant else "")
        )
    lines += [
        "",
        f"Scale: k={k} pre-training alphabets, {s['meta_steps']} meta-steps x {s['meta_batch']} "
        f"tasks of {s['shots']} shots + {s['queries']} queries per character, {s['inner_steps']} "
        f"inner steps, {s['filters']} filters; tested on {len(report['test_alphabets'])} "
        f"images_evaluation alphabets, {s['characters']}-way, {s['test_shots']} training "
        f"drawings per character, {s['test_steps']} steps of {s['inner_optimizer']} "
        f"(lr {s['inner_lr']}). {report.get('runs', 1)} processes side by side, "
        f"{float(report['total_seconds']) / 60:.0f} min wall, "
        f"{float(report.get('cpu_seconds', report['total_seconds'])) / 60:.0f} core-minutes in "
        "all.",
        *(
            [
                "",
                f"Variant: the same runs with a {variant['settings']['head']} head and "
                f"{variant['settings']['inner_optimizer']} (lr {variant['settings']['inner_lr']}) "
                "as the inner loop, pre-training and test alike.",
            ]
            if variant
            else []
        ),
        "",
        f"![alphabet-as-task comparison against the WarpGrad paper]({figure})",
        END,
    ]
    return "\n".join(lines)


def _variant_cell(variant: dict[str, Any], method: str, k: str) -> str:
    result = variant["results"].get(method, {}).get(k)
    if result is None:
        return ""
    low, high = result["ci95_queries"]
    return f"{100 * result['final_accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def plot_against_paper(report: dict[str, Any], path: Path) -> Path:
    """Bars: our final accuracy with its Wilson interval; markers: the paper's at k=25."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = _k(report)
    methods = _methods(report)
    ours = [100 * report["results"][m][k]["final_accuracy"] for m in methods]
    intervals = [report["results"][m][k]["ci95_queries"] for m in methods]
    errors = [
        [o - 100 * low for o, (low, _) in zip(ours, intervals, strict=True)],
        [100 * high - o for o, (_, high) in zip(ours, intervals, strict=True)],
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    positions = range(len(methods))
    ax.bar(positions, ours, yerr=errors, capsize=4, color="#4c72b0", label=f"innerloop, k={k}")
    paper = [(i, PAPER_K25[m]) for i, m in enumerate(methods) if m in PAPER_K25]
    ax.scatter(
        [i for i, _ in paper],
        [v for _, v in paper],
        marker="D",
        color="#dd8452",
        zorder=3,
        label="WarpGrad paper, k=25",
    )
    ax.set_xticks(list(positions), methods)
    ax.set_ylabel("final test accuracy, %")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    settings = report["settings"]
    ax.set_title(
        f"Omniglot alphabets as {settings['characters']}-way tasks, "
        f"{settings['test_steps']} adaptation steps (95% Wilson intervals)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def replace_block(readme: str, block: str) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"README has no {START} ... {END} block")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + block + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="join results.json files of one protocol")
    merge.add_argument("results", nargs="+", type=Path)
    merge.add_argument("--out", type=Path, default=RESULTS)
    readme = commands.add_parser("readme", help="the README table and figure from the results")
    readme.add_argument("--results", type=Path, default=RESULTS)
    readme.add_argument("--variant", type=Path, default=VARIANT, help="a second run's results")
    mode = readme.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, metavar="README")
    mode.add_argument("--check", type=Path, metavar="README")
    args = parser.parse_args(argv)
    if args.command == "merge":
        report = merge_reports([json.loads(p.read_text()) for p in args.results])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out} ({', '.join(_methods(report))})")
        return 0
    report = json.loads(args.results.read_text())
    target = args.write or args.check
    text = target.read_text()
    variant = json.loads(args.variant.read_text()) if args.variant.exists() else None
    updated = replace_block(text, readme_block(report, variant=variant))
    if args.check:
        if updated != text:
            print(f"{target}'s comparison block differs from {args.results}: rerun with --write")
            return 1
        return 0
    target.write_text(updated)
    plot_against_paper(report, FIGURE)
    print(f"wrote the comparison block of {target} and {FIGURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
