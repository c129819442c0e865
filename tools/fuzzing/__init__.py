"""The parts of ``tools/fuzz.py``, the structured decode fuzzer (issue 21).

``tools/fuzz.py`` is the command-line entry point and describes the whole harness; this package
holds its parts, one concept per module, so none grows past the project's module size:

- ``seeds``: the corpus of valid bitstreams (vectors plus freshly encoded seeds, cached);
- ``container_edits``: byte-level edits and a raw writer of the container layout;
- ``image_edits``: format-aware edits of embedded PNG / WebP / HEIF / JPEG XL files, bombs;
- ``header_mutations``, ``payload_mutations``: the mutation kinds, by what they change;
- ``mutations``: the ``Mutator`` drawing reproducible cases from those kinds;
- ``worker``: the decode subprocess (memory cap, socket blocking, outcome classes);
- ``driver``: the case loop over a pool of workers, the findings and the report.
"""

from __future__ import annotations

from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1]
ROOT = TOOLS.parent
SCRIPT = TOOLS / "fuzz.py"  # what a worker subprocess runs (with --worker)
VECTORS = ROOT / "formats" / "vectors"
TINY_WEIGHTS = VECTORS / "vector-tiny.safetensors"
DEFAULT_OUT = ROOT / "results" / "fuzz"
GIB = 1 << 30
