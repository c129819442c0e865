#!/usr/bin/env python
"""Structured fuzzing of ``licstore.decode`` (issue 21): every input must give an image or a LICError.

    python tools/fuzz.py [-n 100000] [--seed 0] [--workers 1] [--timeout 30]
                         [--mem-margin-gib 1.5] [--corpus full|small] [--out results/fuzz]
    python tools/fuzz.py --replay results/fuzz/findings/*.lic   # rerun saved reproducers
    python tools/fuzz.py --seed 3 --start 6903 -n 1 [--show]      # rerun (or list) one case

Seeds are real bitstreams: every ``formats/vectors/*.lic`` plus small images encoded at
start-up (every mode, HEVC and lossless residuals with PNG, WebP and JPEG XL; kept in
``<out>/corpus-<kind>.bin``, delete it to encode them again). Each case takes one seed and one
mutation kind, both drawn from ``random.Random(f"{seed}/{case}")``, so a case is reproducible
from its number alone. Mutations work on the container's fields and re-pack
with a valid CRC (``licstore.container.pack`` where the fields are valid, a raw writer of the
same layout where they are not), so they reach past the CRC check into the header checks,
the model lookup, the entropy decoder, the side layers and their image decoders:

- ``header.*``: dimensions, rate, mode, flags, version, model name (registered names,
  ``compressai:`` names, invalid ones), weights hash;
- ``layers.*``: drop, add, change kind, reorder, duplicate, unknown kind, layer count, data
  lengths, moved payload boundaries, meta bytes, layers spliced from other seeds;
- ``base.*``: base-layer payload (rANS strings, the z length, resgdn-vr ranges and code map);
- ``side.*``: alpha PNG, palette bytes and JSON meta, residual-hevc meta and HEIF file (its
  CRC in the meta fixed so the HEVC decoder runs), residual-lossless meta, tie list and
  PNG/WebP/JPEG XL file; image headers are edited format-aware (PNG IHDR with chunk CRC,
  WebP VP8L size, HEIF ``ispe``) and whole layers are swapped for decompression bombs;
- ``raw.*``: bit flips without CRC fix-up, byte edits / insertions / truncations with it,
  random bytes; ``multi``: 2-4 structured mutations stacked.

Cases run in a pool of persistent worker subprocesses (torch imported once per worker; a
worker that crashes or times out is killed and restarted). Each worker
decodes its warm-up seeds first (so every model is loaded), measures its address space and
caps it with ``RLIMIT_AS`` at that baseline plus ``--mem-margin-gib``; ``socket.socket``,
``create_connection`` and ``getaddrinfo`` raise and record the attempt. Outcome classes:

- ``image``: a PIL image whose size and mode are the header's (else ``wrong-image``);
- ``lic:<Error>``: a ``licstore.errors.LICError`` subclass (``lic:DecodeMemoryError`` is a
  decode that ran out of memory under the cap and said so: allowed);
- findings: ``exception:<Type>``, ``memory-cap`` (MemoryError or an allocation failure under
  the cap), ``network`` (a socket was attempted), ``zoo-decoded`` (a ``compressai:`` name
  decoded), ``zoo-not-refused:<Error>`` (a valid file renamed ``compressai:...`` that gave
  another error than ``ModelNotFoundError``), ``crash:<signal or exit code>``, ``timeout``,
  ``wrong-image``.

Findings are written to ``<out>/findings/`` (the bitstream, a few per distinct signature) and
``<out>/findings.jsonl`` (case, kind, description, traceback). The report gives counts per
outcome class, per mutation kind and the wall time.

This file is the command line; the parts are in ``tools/fuzzing/`` (corpus, edits, mutation
kinds, worker, driver: see its ``__init__``), found through this file's folder on sys.path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:  # the parts, in tools/fuzzing/ (tools/ is not a package)
    sys.path.insert(1, str(HERE))

from fuzzing import DEFAULT_OUT, GIB, TINY_WEIGHTS, VECTORS  # noqa: E402
from fuzzing.container_edits import Raw, RawLayer, bitflip, byte_edit, read_varint, varint  # noqa: E402
from fuzzing.driver import Report, replay, run  # noqa: E402
from fuzzing.image_edits import build_bombs, mutate_image_file, png_bomb  # noqa: E402
from fuzzing.mutations import Mutator, zoo_names  # noqa: E402
from fuzzing.seeds import _register_tiny, load_corpus  # noqa: E402
from fuzzing.worker import _NETWORK, OK_PREFIXES, Worker, _run_one, is_finding, worker_main  # noqa: E402

__all__ = [
    "DEFAULT_OUT",
    "GIB",
    "OK_PREFIXES",
    "ROOT",
    "TINY_WEIGHTS",
    "VECTORS",
    "Mutator",
    "Raw",
    "RawLayer",
    "Report",
    "Worker",
    "_NETWORK",
    "_register_tiny",
    "_run_one",
    "bitflip",
    "build_bombs",
    "byte_edit",
    "is_finding",
    "load_corpus",
    "main",
    "mutate_image_file",
    "png_bomb",
    "read_varint",
    "replay",
    "run",
    "varint",
    "worker_main",
    "zoo_names",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--start", type=int, default=0, help="first case number (rerun one: --start K -n 1)"
    )
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    ap.add_argument(
        "--mem-margin-gib", type=float, default=1.5, help="address space above the baseline"
    )
    ap.add_argument("--corpus", choices=["full", "small"], default="full")
    ap.add_argument(
        "--kinds",
        help="only these mutation kinds (patterns, comma-separated; cases are reproducible "
        "with the same --kinds)",
    )
    ap.add_argument(
        "--max-seconds", type=float, default=None, help="stop starting cases after this"
    )
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--replay", nargs="+", metavar="FILE", help="decode saved reproducers")
    ap.add_argument("--show", action="store_true", help="print each case (kind, mutation)")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.mem_margin_gib)
        return 0
    if args.replay:
        replay(args.replay, args)
        return 0
    if args.show:
        cache = Path(args.out) / f"corpus-{args.corpus}.bin"
        corpus = load_corpus(args.corpus, cache=cache)
        mutator = Mutator(corpus, build_bombs(), zoo_names(), args.kinds)
        for index in range(args.start, args.start + args.cases):
            kind, seed_name, desc, data = mutator.case(args.seed, index)
            print(f"{index}: {kind} from {seed_name}: {desc} ({len(data)} B)")
        return 0
    report = run(
        n=args.cases,
        seed=args.seed,
        workers=args.workers,
        timeout=args.timeout,
        mem_margin_gib=args.mem_margin_gib,
        corpus=args.corpus,
        out=Path(args.out),
        threads=args.threads,
        start=args.start,
        progress=True,
        max_seconds=args.max_seconds,
        kinds=args.kinds,
    )
    print(report.text())
    if args.verbose:
        seen = set()
        for f in report.findings:
            if f["signature"] not in seen:
                seen.add(f["signature"])
                print(
                    f"\n[{f['outcome']}] case {f['case']} {f['kind']}: {f['mutation']}\n  {f.get('detail', '')}\n  {f.get('file')}"
                )
                print(f.get("traceback", "")[-1500:])
    return 1 if report.finding_count() else 0


if __name__ == "__main__":
    sys.exit(main())
