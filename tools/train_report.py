#!/usr/bin/env python
"""Kodak-during-training table from one or more ``log.jsonl`` files (for model cards).

    python tools/train_report.py runs/stage0/log.jsonl:0.50 runs/stage1/log.jsonl

``LOG:HOURS`` counts only HOURS of that run toward the next one (when the next run was
initialised from a checkpoint written before the run's end).

Runs are chained: each later run's hours are added to the previous runs' total, so the
table shows the RD curve over cumulative training time. The points are the quick
estimates ``tools/train.py`` logs (4 Kodak images, bits from the likelihoods, float
model), not the shipped codec's numbers: those come from ``tools/eval_rd.py``. Below the
table, each run's training throughput (patches/s of its 100-step records: median, range).
"""

from __future__ import annotations

import argparse
import json
import statistics


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("logs", nargs="+")
    args = ap.parse_args(argv)
    offset = 0.0
    rates: dict[str, list[float]] = {}
    print(
        "| cumulative h | run | step | "
        + " | ".join(f"r={r:g} bpp / dB" for r in (0, 3.5, 7))
        + " |"
    )
    print("|---|---|---|---|---|---|")
    for spec in args.logs:
        log, _, used = spec.partition(":")
        last = 0.0
        with open(log) as f:
            for line in f:
                rec = json.loads(line)
                if "hours" in rec:
                    last = max(last, rec["hours"])
                if "patches_per_s" in rec:
                    rates.setdefault(log, []).append(rec["patches_per_s"])
                if rec.get("event") != "kodak":
                    continue
                pts = " | ".join(f"{p['bpp']:.3f} / {p['psnr']:.2f}" for p in rec["points"])
                print(f"| {offset + rec['hours']:.2f} | {log} | {rec['step']} | {pts} |")
        offset += float(used) if used else last
    print()
    for log, r in rates.items():
        print(
            f"{log}: median {statistics.median(r):.1f} patches/s "
            f"({min(r):.1f}-{max(r):.1f}, {len(r)} records)"
        )


if __name__ == "__main__":
    main()
