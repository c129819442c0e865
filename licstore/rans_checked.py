"""CompressAI's rANS decoding (``RansDecoder.decode_with_indexes``) with every read checked.

CompressAI's C++ decoder trusts its stream: after an escape symbol the stream itself says how
many bypass chunks follow, so a crafted string can make it read past its buffer. Strings with
many escapes (common on large photos, where hundreds of latents fall outside their tables) are
decoded here instead: the same algorithm step for step, stopping with an error code at the
first read past the end. Compiled with numba, so it runs at native speed; numba is imported
only when such a string first arrives (a reader that never meets one does not load it).
"""

from __future__ import annotations

import numpy as np

#: status codes of :func:`decode`
OK, PAST_END, BYPASS_TOO_LONG, SHORT = 0, 1, 2, 3

_compiled = None


def _kernel():
    global _compiled
    if _compiled is None:
        from numba import njit

        _compiled = njit(cache=True, nogil=True)(_decode_kernel)
    return _compiled


def decode(
    words: np.ndarray,
    indexes: np.ndarray,
    cdfs: np.ndarray,
    cdf_length: np.ndarray,
    offset: np.ndarray,
    max_bypass_chunks: int,
) -> tuple[np.ndarray, int]:
    """Symbols of the rANS string ``words`` (little-endian uint32) and a status code.

    ``cdfs``: [tables, max length] int64 rows (strictly increasing from 0 to 2**16 over their
    ``cdf_length``); ``offset``: per table. Status ``OK``, or why the string is corrupt.
    """
    out = np.zeros(indexes.size, dtype=np.int64)
    status = _kernel()(
        words.astype(np.uint64),
        indexes.astype(np.int64),
        cdfs,
        cdf_length.astype(np.int64),
        offset.astype(np.int64),
        max_bypass_chunks,
        out,
    )
    return out, int(status)


def _decode_kernel(words, indexes, cdfs, cdf_length, offset, max_chunks, out):  # pragma: no cover
    end = words.size
    if end < 2:
        return SHORT
    low = np.uint64(1 << 31)
    mask16 = np.uint64(0xFFFF)
    x = words[0] | (words[1] << np.uint64(32))
    pos = 2
    for i in range(indexes.size):
        t = indexes[i]
        n = cdf_length[t]
        cum = np.int64(x & mask16)
        # largest s with cdf[s] <= cum (rows strictly increasing, cdf[0] = 0)
        lo, hi = 0, n - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cdfs[t, mid] <= cum:
                lo = mid
            else:
                hi = mid
        s = lo
        start = cdfs[t, s]
        freq = cdfs[t, s + 1] - start
        x = np.uint64(freq) * (x >> np.uint64(16)) + np.uint64(cum - start)
        if x < low:
            if pos >= end:
                return PAST_END
            x = (x << np.uint64(32)) | words[pos]
            pos += 1
        value = np.int64(s)
        if s == n - 2:  # escape: 4-bit bypass chunks, their count first (15 = more follow)
            counted = 0
            count = -1
            raw = np.int64(0)
            got = 0
            while count < 0 or got < count:
                val = np.int64(x & np.uint64(15))
                x = x >> np.uint64(4)
                if x < low:
                    if pos >= end:
                        return PAST_END
                    x = (x << np.uint64(32)) | words[pos]
                    pos += 1
                if count < 0:
                    counted += val
                    if counted > max_chunks:
                        return BYPASS_TOO_LONG
                    if val != 15:
                        count = counted
                else:
                    raw |= val << (4 * got)
                    got += 1
            if raw >= (1 << 31):  # the C++ decoder's int32_t
                raw -= 1 << 32
            if raw & 1:
                value = -(raw >> 1) - 1
            else:
                value = (raw >> 1) + n - 2
        out[i] = value + offset[t]
    return OK
