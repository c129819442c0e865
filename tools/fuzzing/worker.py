"""The decode worker subprocess and its parent-side handle, and the outcome classes.

A worker is ``tools/fuzz.py --worker``: it imports torch once, decodes warm-up seeds, caps
its address space with ``RLIMIT_AS``, blocks sockets and classifies each case's outcome;
``Worker`` starts, feeds, reads and restarts it. Kept apart so the parent needs no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import struct
import subprocess
import sys
import time
from pathlib import Path

from licstore import container

from . import GIB, SCRIPT, TINY_WEIGHTS
from .seeds import _register_tiny

OK_PREFIXES = ("image", "lic:")


def is_finding(outcome: str) -> bool:
    return not outcome.startswith(OK_PREFIXES)


_NETWORK: list[str] = []


def _block_network() -> None:
    import socket
    import traceback

    def refuse(*args, **kwargs):
        _NETWORK.append("".join(traceback.format_stack(limit=12)))
        raise OSError("network access blocked by the licstore fuzz harness")

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            refuse()

    socket.socket = NoSocket  # type: ignore[misc]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]


def _vm_size() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _read_exact(stream, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _run_one(data: bytes) -> dict:
    """Decode one input; the outcome class plus what a finding needs."""
    import traceback

    from PIL import Image

    import licstore
    from licstore.errors import LICError, ModelNotFoundError

    _NETWORK.clear()
    result: dict = {}
    try:
        header = container.unpack(data)
    except Exception:
        header = None
    t = time.perf_counter()
    try:
        info_error = None
        try:
            licstore.info(data)
        except LICError:
            pass
        except Exception as exc:  # info() must fail the same typed way
            info_error = exc
        image = licstore.decode(data)
        if info_error is not None:
            raise info_error
        if not isinstance(image, Image.Image):
            outcome = "wrong-image"
            result["detail"] = f"decode returned {type(image).__name__}"
        elif (
            header is None
            or image.size != (header.width, header.height)
            or image.mode != header.mode
        ):
            outcome = "wrong-image"
            want = (header.width, header.height, header.mode) if header else "no valid header"
            result["detail"] = f"image {image.size} {image.mode}, header {want}"
        elif header.model.startswith("compressai:"):
            outcome = "zoo-decoded"
        else:
            outcome = "image"
    except LICError as exc:
        outcome = f"lic:{type(exc).__name__}"
        if (
            header is not None
            and header.model.startswith("compressai:")
            and not isinstance(exc, ModelNotFoundError)
        ):
            result["detail"] = f"compressai name gave {type(exc).__name__}: {exc}"[:300]
    except MemoryError as exc:
        outcome = "memory-cap"
        result["detail"] = f"MemoryError: {exc}"[:300]
        result["traceback"] = traceback.format_exc()[-3000:]
    except BaseException as exc:  # noqa: BLE001  (anything else is a finding)
        text = str(exc)
        if isinstance(exc, RuntimeError) and ("allocate" in text or "out of memory" in text):
            outcome = "memory-cap"
        else:
            outcome = f"exception:{type(exc).__name__}"
        result["detail"] = f"{type(exc).__name__}: {text}"[:300]
        result["traceback"] = traceback.format_exc()[-3000:]
    if _NETWORK:
        result["detail"] = f"{outcome}; socket attempted"
        result["traceback"] = _NETWORK[0][-3000:]
        outcome = "network"
    result["outcome"] = outcome
    result["seconds"] = round(time.perf_counter() - t, 4)
    return result


def worker_main(mem_margin: float) -> None:
    """Protocol on stdin/stdout: ``<u8 type><u32 len><payload>`` in, one JSON line out.

    Types: ``W`` warm-up decode (no cap yet), ``L`` set the memory cap now, ``C`` a case.
    """
    import resource

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints must not corrupt the protocol
    _block_network()
    import warnings

    warnings.simplefilter("ignore")
    import licstore  # noqa: F401  (torch imported once, here)

    if TINY_WEIGHTS.exists():
        _register_tiny()
    stdin = sys.stdin.buffer
    while True:
        head = _read_exact(stdin, 5)
        if head is None:
            return
        kind, n = head[:1], struct.unpack("<I", head[1:])[0]
        payload = _read_exact(stdin, n) or b""
        if kind == b"L":
            baseline = _vm_size()
            cap = baseline + int(mem_margin * GIB)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            proto.write(json.dumps({"baseline": baseline, "cap": cap}) + "\n")
        else:
            proto.write(json.dumps(_run_one(payload)) + "\n")


class Worker:
    def __init__(self, wid: int, args: argparse.Namespace, warmup: list[bytes], log_dir: Path):
        self.wid = wid
        self.args = args
        self.warmup = warmup
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.case: tuple | None = None
        self.started = 0.0
        self.buf = b""
        self.baseline = 0
        self.cap = 0
        self.restarts = -1

    def start(self) -> list[dict]:
        self.restarts += 1
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(self.args.threads))
        env.setdefault("MKL_NUM_THREADS", str(self.args.threads))
        env.setdefault("MALLOC_ARENA_MAX", "2")
        env.setdefault("PYTHONWARNINGS", "ignore")
        log = open(self.log_dir / f"worker-{self.wid}.log", "ab")
        cmd = [
            sys.executable,
            str(SCRIPT),
            "--worker",
            "--mem-margin-gib",
            str(self.args.mem_margin_gib),
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env
        )
        log.close()
        os.set_blocking(self.proc.stdout.fileno(), False)
        results = []
        for data in self.warmup:
            self.send(b"W", data)
            results.append(self.read_blocking())
        self.send(b"L", b"")
        limits = self.read_blocking()
        self.baseline, self.cap = limits["baseline"], limits["cap"]
        return results

    def send(self, kind: bytes, data: bytes) -> None:
        self.proc.stdin.write(kind + struct.pack("<I", len(data)) + data)
        self.proc.stdin.flush()

    def read_line(self) -> dict | None | bool:
        """A result if a whole line is buffered; None if not yet; False on EOF."""
        try:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            return False
        if chunk:
            self.buf += chunk
        if b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            return json.loads(line)
        return None

    def read_blocking(self, timeout: float = 600.0) -> dict:
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                got = self.read_line()
                if got is False:
                    raise RuntimeError(
                        f"fuzz worker died during start-up (rc {self.proc.wait()}); see worker log"
                    )
                if got is not None:
                    return got
                if time.monotonic() > deadline:
                    raise RuntimeError("fuzz worker start-up timed out")
                sel.select(1.0)
        finally:
            sel.close()

    def kill(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc = None
        self.buf = b""
        return rc

    def stop(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.kill()
