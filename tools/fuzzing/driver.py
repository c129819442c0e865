"""The fuzzing run: cases over a pool of workers, findings saved, and the report.

Kept apart from the entry point so ``run`` can be called from tests, and from the worker so
the parent process stays pure Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import selectors
import signal
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from licstore import container

from . import DEFAULT_OUT, GIB
from .image_edits import build_bombs
from .mutations import Mutator, zoo_names
from .seeds import load_corpus
from .worker import Worker, is_finding


@dataclasses.dataclass
class Report:
    cases: int = 0
    seconds: float = 0.0
    outcomes: Counter = dataclasses.field(default_factory=Counter)
    by_kind: dict = dataclasses.field(default_factory=lambda: defaultdict(Counter))
    seconds_by_kind: Counter = dataclasses.field(default_factory=Counter)  # in the decoder
    findings: list = dataclasses.field(default_factory=list)
    baseline: int = 0
    cap: int = 0
    restarts: int = 0
    seeds: int = 0
    dropped_seeds: list = dataclasses.field(default_factory=list)

    def finding_count(self) -> int:
        return sum(n for o, n in self.outcomes.items() if is_finding(o))

    def text(self) -> str:
        lines = [
            f"{self.cases} cases in {self.seconds:.1f} s ({self.cases / max(self.seconds, 1e-9):.1f}/s), "
            f"{self.seeds} seeds, worker address space {self.baseline / GIB:.2f} GiB, "
            f"cap {self.cap / GIB:.2f} GiB, {self.restarts} worker restarts",
            "",
            "outcome classes:",
        ]
        for outcome, n in sorted(self.outcomes.items(), key=lambda kv: (is_finding(kv[0]), -kv[1])):
            lines.append(f"  {n:8d}  {outcome}{'   <-- FINDING' if is_finding(outcome) else ''}")
        lines += ["", "per mutation kind (cases: image / LICError / finding, mean decode ms):"]
        for kind in sorted(self.by_kind):
            c = self.by_kind[kind]
            img = c["image"]
            lic = sum(n for o, n in c.items() if o.startswith("lic:"))
            bad = sum(n for o, n in c.items() if is_finding(o))
            extra = ", ".join(f"{o} {n}" for o, n in sorted(c.items()) if is_finding(o))
            ms = 1000 * self.seconds_by_kind[kind] / max(sum(c.values()), 1)
            lines.append(
                f"  {kind:26s} {sum(c.values()):7d}: {img:6d} / {lic:6d} / {bad:4d} "
                f"{ms:7.0f}  {extra}"
            )
        if self.dropped_seeds:
            lines += [
                "",
                "seeds that do not decode here (not used): " + ", ".join(self.dropped_seeds),
            ]
        return "\n".join(lines)


def _signature(result: dict) -> str:
    tb = result.get("traceback", "")
    frames = [ln.strip() for ln in tb.splitlines() if ln.strip().startswith("File ")]
    where = frames[-1] if frames else ""
    return f"{result['outcome']}|{where}"


def run(
    n: int = 100_000,
    seed: int = 0,
    workers: int = 1,
    timeout: float = 30.0,
    mem_margin_gib: float = 1.5,
    corpus: str = "full",
    out: Path = DEFAULT_OUT,
    threads: int = 1,
    start: int = 0,
    progress: bool = False,
    max_seconds: float | None = None,
    save_per_signature: int = 3,
    kinds: str | None = None,
) -> Report:
    """Run cases ``start .. start + n - 1`` and return the report (see ``tools/fuzz.py``'s docstring)."""
    t0 = time.perf_counter()
    out = Path(out)
    (out / "findings").mkdir(parents=True, exist_ok=True)
    seeds = load_corpus(corpus, cache=out / f"corpus-{corpus}.bin")
    args = argparse.Namespace(mem_margin_gib=mem_margin_gib, threads=threads)
    # warm-up: one seed per (model, weights) so every model is loaded before the cap
    firsts: dict = {}
    for i, (_, data) in enumerate(seeds):
        bs = container.unpack(data)
        firsts.setdefault((bs.model, bs.weights_hash), i)
    warm_idx = sorted(firsts.values())
    pool = [Worker(w, args, [seeds[i][1] for i in warm_idx], out) for w in range(workers)]
    warm = pool[0].start()
    report = Report()
    bad_models = set()
    for i, res in zip(warm_idx, warm):
        if res["outcome"] != "image":
            bs = container.unpack(seeds[i][1])
            bad_models.add((bs.model, bs.weights_hash))
    keep = []
    for name, data in seeds:
        bs = container.unpack(data)
        if (bs.model, bs.weights_hash) in bad_models:
            report.dropped_seeds.append(name)
        else:
            keep.append((name, data))
    if bad_models:  # restart without the models that do not load, so the cap fits the rest
        for w in pool:
            w.warmup = [
                d
                for d in w.warmup
                if (container.unpack(d).model, container.unpack(d).weights_hash) not in bad_models
            ]
        pool[0].kill()
        pool[0].start()
    for w in pool[1:]:
        w.start()
    mutator = Mutator(keep, build_bombs(), zoo_names(), kinds)
    report.seeds = len(keep)
    report.baseline, report.cap = pool[0].baseline, pool[0].cap
    saved: Counter = Counter()
    findings_log = open(out / "findings.jsonl", "a")
    sel = selectors.DefaultSelector()
    next_case = start
    end = start + n
    t_run = time.perf_counter()
    last_print = t_run

    def finish(w: Worker, result: dict) -> None:
        index, kind, seed_name, desc, data = w.case
        w.case = None
        outcome = result["outcome"]
        if kind == "header.model-compressai" and outcome.startswith("lic:"):
            # a valid file but for its compressai: name: only "model not found" is right
            if outcome != "lic:ModelNotFoundError":
                outcome = result["outcome"] = f"zoo-not-refused:{outcome[4:]}"
        report.cases += 1
        report.outcomes[outcome] += 1
        report.by_kind[kind][outcome] += 1
        report.seconds_by_kind[kind] += result.get("seconds", 0.0)
        if is_finding(outcome):
            sig = _signature(result)
            path = None
            if saved[sig] < save_per_signature:
                saved[sig] += 1
                safe = outcome.replace(":", "-")
                path = out / "findings" / f"{safe}__{kind}__s{seed}-c{index}.lic"
                path.write_bytes(data)
            record = {
                "case": index,
                "seed": seed,
                "kind": kind,
                "from": seed_name,
                "mutation": desc,
                "outcome": outcome,
                "signature": sig,
                "file": str(path) if path else None,
                **{k: v for k, v in result.items() if k in ("detail", "traceback", "seconds")},
            }
            report.findings.append(record)
            findings_log.write(json.dumps(record) + "\n")
            findings_log.flush()

    try:
        while True:
            for w in pool:
                if (
                    w.case is None
                    and next_case < end
                    and (max_seconds is None or time.perf_counter() - t_run < max_seconds)
                ):
                    kind, seed_name, desc, data = mutator.case(seed, next_case)
                    w.case = (next_case, kind, seed_name, desc, data)
                    next_case += 1
                    w.started = time.monotonic()
                    try:
                        w.send(b"C", data)
                    except (BrokenPipeError, OSError):
                        pass
            busy = [w for w in pool if w.case is not None]
            if not busy:
                break
            for w in busy:
                try:
                    sel.register(w.proc.stdout, selectors.EVENT_READ, w)
                except (KeyError, ValueError):
                    pass
            wait = max(0.0, min(w.started + timeout - time.monotonic() for w in busy))
            sel.select(min(wait, 1.0))
            for w in busy:
                got = w.read_line()
                if got:
                    finish(w, got)
                    continue
                dead = got is False or w.proc.poll() is not None
                late = time.monotonic() - w.started > timeout
                if dead or late:
                    sel.unregister(w.proc.stdout)
                    rc = w.kill()
                    if dead:
                        name = signal.Signals(-rc).name if rc < 0 else f"exit{rc}"
                        outcome = f"crash:{name}"
                    else:
                        outcome = "timeout"
                    log = (out / f"worker-{w.wid}.log").read_bytes()[-2000:]
                    seconds = round(time.monotonic() - w.started, 2)
                    finish(
                        w,
                        {
                            "outcome": outcome,
                            "seconds": seconds,
                            "detail": f"worker rc {rc} after {seconds} s",
                            "traceback": log.decode(errors="replace"),
                        },
                    )
                    report.restarts += 1
                    w.start()
            for w in busy:
                if w.proc is not None:
                    try:
                        sel.unregister(w.proc.stdout)
                    except (KeyError, ValueError):
                        pass
            now = time.perf_counter()
            if progress and now - last_print > 30:
                last_print = now
                print(
                    f"  {report.cases} cases, {now - t_run:.0f} s, findings {report.finding_count()}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        sel.close()
        findings_log.close()
        for w in pool:
            w.stop()
    report.seconds = time.perf_counter() - t0
    return report


def replay(paths: list[str], args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w = Worker(0, args, [], out)
    w.start()
    try:
        for p in paths:
            w.send(b"C", Path(p).read_bytes())
            try:
                result = w.read_blocking(timeout=args.timeout)
            except RuntimeError as exc:
                rc = w.kill()
                result = {"outcome": f"crash/timeout (rc {rc})", "detail": str(exc)}
                w.start()
            secs = result.get("seconds", "?")
            print(f"{p}: {result['outcome']} ({secs} s)  {result.get('detail', '')}")
            if args.verbose and "traceback" in result:
                print(result["traceback"])
    finally:
        w.stop()
