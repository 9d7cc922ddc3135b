"""Charts for docs/benchmarks.md from the benchmarks' JSON lines.

    .venv/bin/python benchmarks/dataflow.py  | tee /tmp/dataflow.out
    .venv/bin/python benchmarks/freshness.py --load 0 2000 5000 10000 | tee /tmp/freshness.out
    .venv/bin/python benchmarks/plot.py /tmp/dataflow.out /tmp/freshness.out

Reads every line that is a benchmark's JSON result and draws, into
docs/images/: `dataflow_workers.png` (events/s of the dataflow per worker
count, next to the bare copy) and `freshness_load.png` (p50/p99 delay
against the load offered).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def results(paths: list[Path]) -> dict[str, dict]:
    found = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.startswith('{"benchmark"'):
                data = json.loads(line)
                found[data["benchmark"]] = data
    return found


def save(fig, ax, title: str, name: str) -> Path:
    """Common finish of every chart: zero-based y axis, title, legend, PNG."""
    ax.set_ylim(bottom=0)
    ax.set_title(f"{title}, all services on one box")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = IMAGES / name
    fig.savefig(out, dpi=120)
    return out


def plot_dataflow(data: dict) -> Path:
    rows = data["results"]
    # Each dataflow row follows the bare copy measured in the same system.
    pairs = [(rows[i - 1], r) for i, r in enumerate(rows) if r["pipeline"].startswith("dataflow w=")]
    copies = [copy for copy, _ in pairs]
    flows = [flow for _, flow in pairs]
    workers = [int(r["pipeline"].split("w=")[1]) for r in flows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(workers, [r["events_per_s"] for r in flows], "o-", label="dataflow (validate, dedup, ClickHouse, S3, detectors)")
    ax.plot(workers, [r["events_per_s"] for r in copies], "s--", label="bare Kafka → ClickHouse copy")
    ax.set_xlabel("Bytewax workers")
    ax.set_ylabel("events/s")
    ax.set_xticks(workers)
    return save(fig, ax, f"Dataflow throughput, {data['machine']['cores']} cores", "dataflow_workers.png")


def plot_freshness(data: dict) -> Path:
    rows = data["results"]
    load = [r["achieved_per_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(load, [r["p50_ms"] for r in rows], "o-", label="p50")
    ax.plot(load, [r["p99_ms"] for r in rows], "s-", label="p99")
    ax.axhline(1000, color="grey", linestyle=":", label="target p99 1 s")
    ax.set_xlabel("load achieved through the API (events/s)")
    ax.set_ylabel("API 200 → counted in /v1/usage (ms)")
    return save(fig, ax, f"Freshness, {data['machine']['cores']} cores", "freshness_load.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", type=Path, nargs="+", help="files holding the benchmarks' output")
    args = parser.parse_args()
    found = results(args.outputs)
    IMAGES.mkdir(parents=True, exist_ok=True)
    drawn = []
    if "dataflow" in found:
        drawn.append(plot_dataflow(found["dataflow"]))
    if "freshness" in found:
        drawn.append(plot_freshness(found["freshness"]))
    if not drawn:
        print("no dataflow or freshness results in the files given", file=sys.stderr)
        return 1
    for path in drawn:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
