"""The mutator: draws reproducible (kind, seed, description, bytes) cases from the corpus.

The kinds themselves live in ``header_mutations`` and ``payload_mutations`` (mixins); this
module holds their table and weights, the case drawing, ``multi`` (stacked kinds) and the
CompressAI zoo names the ``header.model-compressai`` kind uses.
"""

from __future__ import annotations

import fnmatch
import random
from collections import defaultdict
from pathlib import Path

from licstore import container

from .header_mutations import HeaderLayerMutations
from .payload_mutations import PayloadMutations


class Mutator(HeaderLayerMutations, PayloadMutations):
    """Draws (kind, description, bytes) cases from a corpus of valid bitstreams."""

    def __init__(
        self,
        corpus: list[tuple[str, bytes]],
        bombs: dict[str, bytes],
        zoo: dict[str, bytes],
        kinds: str | None = None,
    ):
        self.corpus = corpus
        self.parsed = [container.unpack(data) for _, data in corpus]
        self.bombs = bombs
        self.zoo = zoo
        self.by_kind: dict[str, list[int]] = defaultdict(list)
        for i, bs in enumerate(self.parsed):
            for layer in bs.layers:
                self.by_kind[layer.kind].append(i)
        self.models = sorted({(bs.model, bs.weights_hash) for bs in self.parsed})
        self.kinds: dict[str, tuple[float, object]] = {
            "header.dims": (6, self.header_dims),
            "header.dims-raw": (2, self.header_dims_raw),
            "header.dims-consistent": (3, self.header_dims_consistent),
            "header.rate": (4, self.header_rate),
            "header.mode": (5, self.header_mode),
            "header.mode-raw": (1, self.header_mode_raw),
            "header.flags": (1, self.header_flags),
            "header.version": (1, self.header_version),
            "header.model": (3, self.header_model),
            "header.model-compressai": (3, self.header_model_compressai),
            "header.model-raw": (1, self.header_model_raw),
            "header.hash": (2, self.header_hash),
            "layers.drop": (3, self.layers_drop),
            "layers.add": (3, self.layers_add),
            "layers.kind": (3, self.layers_kind),
            "layers.reorder": (1, self.layers_reorder),
            "layers.raw": (3, self.layers_raw),
            "layers.shift": (2, self.layers_shift),
            "layers.meta": (4, self.layers_meta),
            "layers.splice": (3, self.layers_splice),
            "base.payload": (8, self.base_payload),
            "base.structure": (4, self.base_structure),
            "side.alpha": (5, self.side_alpha),
            "side.palette": (5, self.side_palette),
            "side.hevc-meta": (4, self.side_hevc_meta),
            "side.hevc-file": (5, self.side_hevc_file),
            "side.lossless-meta": (3, self.side_lossless_meta),
            "side.lossless-ties": (3, self.side_lossless_ties),
            "side.lossless-file": (5, self.side_lossless_file),
            "side.bomb": (3, self.side_bomb),
            "raw.bitflip": (2, self.raw_bitflip),
            "raw.edit-crc": (5, self.raw_edit_crc),
            "raw.truncate": (1, self.raw_truncate),
            "raw.random": (1, self.raw_random),
            "multi": (4, self.multi),
        }
        self._names = list(self.kinds)
        if kinds:  # comma-separated shell patterns: "side.*,header.dims"
            pats = kinds.split(",")
            self._names = [k for k in self._names if any(fnmatch.fnmatch(k, p) for p in pats)]
            if not self._names:
                raise SystemExit(f"--kinds {kinds!r} matches none of {sorted(self.kinds)}")
        self._forced: int | None = None  # multi: every step mutates the same seed
        self._weights = [self.kinds[k][0] for k in self._names]

    # a case ------------------------------------------------------------------------------

    def case(self, seed: int, index: int) -> tuple[str, str, str, bytes]:
        """(kind, seed name, description, bytes) of case ``index``; reproducible."""
        rng = random.Random(f"{seed}/{index}")
        kind = rng.choices(self._names, self._weights)[0]
        for _ in range(8):  # kinds that need a layer retry with a seed that has one
            out = self.kinds[kind][1](rng)
            if out is not None:
                i, desc, data = out
                return kind, self.corpus[i][0], desc, data
        i = rng.randrange(len(self.corpus))
        return kind, self.corpus[i][0], "unmodified (no applicable seed)", self.corpus[i][1]

    def pick(self, rng: random.Random, layer: str | None = None) -> int | None:
        forced = self._forced
        if forced is not None:  # multi: the seed being mutated, if it has the layer
            return forced if layer is None or self.parsed[forced].layer(layer) else None
        pool = self.by_kind.get(layer, []) if layer else range(len(self.corpus))
        return rng.choice(pool) if pool else None

    def multi(self, rng):
        structured = [
            k for k in self._names if k.startswith(("header.", "layers.", "base.", "side."))
        ]
        chosen = rng.sample(structured, rng.choice([2, 3, 4]))
        i = self.pick(rng)
        data, descs = self.corpus[i][1], []
        saved = self.parsed[i], self.corpus[i]
        try:
            for kind in chosen:
                try:
                    bs = container.unpack(data)
                except container.CorruptBitstreamError:
                    break
                self.parsed[i], self.corpus[i] = bs, (saved[1][0], data)
                self._forced = i
                try:
                    out = self.kinds[kind][1](random.Random(rng.random()))
                finally:
                    self._forced = None
                if out is None or out[0] != i:
                    continue
                data = out[2]
                descs.append(f"{kind}: {out[1]}")
        finally:
            self.parsed[i], self.corpus[i] = saved
        return i, " + ".join(descs) or "unmodified", data


def zoo_names() -> dict[str, bytes]:
    """CompressAI zoo architecture -> the weights hash licstore's adapter writes for it
    (SHA-256 of the "|"-joined hashes in the published mse URLs of qualities 1-8).

    Read from CompressAI's source text: importing ``compressai.zoo`` takes seconds."""
    import hashlib
    import importlib.util
    import re

    spec = importlib.util.find_spec("compressai")
    if spec is None or spec.origin is None:
        return {"mbt2018-mean": bytes(8), "bmshj2018-hyperprior": bytes(8)}
    text = (Path(spec.origin).parent / "zoo" / "image.py").read_text()
    out = {}
    for arch in re.findall(r'^    "([a-z0-9-]+)": \{\n        "mse"', text, re.M):
        block = text[text.index(f'"{arch}": {{') :]
        block = block[: block.index('"ms-ssim"')] if '"ms-ssim"' in block else block
        parts = re.findall(r"-([0-9a-f]{8})\.pth", block)[:8]
        digest = hashlib.sha256("|".join(parts).encode()).hexdigest()
        out[arch] = bytes.fromhex(digest[:16])
    return out
