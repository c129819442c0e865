#!/usr/bin/env python
"""Rate-distortion evaluation of licstore models against classical codecs (= ``licstore eval``).

Writes ``<out>.json`` (all points and per-image values), ``<out>.md`` (BD-rate table, also
printed) and ``<out>.png`` (RD plot). Example::

    python tools/eval_rd.py --codecs jpeg,webp,hevc444,licstore:mshp-vr --limit 4
    python tools/eval_rd.py --codecs jpeg,hevc420 --q jpeg=10,90 --q hevc420=10,85 --limit 2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from licstore.rd import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
