#!/usr/bin/env python
"""A real S3 endpoint on 127.0.0.1, for tests, recipes and benchmarks.

moto's S3 server (``pip install "moto[server]"``) on a loopback port, behind a small WSGI layer
that (1) checks every request's AWS Signature V4 against the one key pair it knows, as S3
does (an unknown key is ``InvalidAccessKeyId``, a wrong secret ``SignatureDoesNotMatch``,
both 403), (2) logs every request with the bytes of the body it served, so tests can count
what a read fetched, and (3) can stop mid-job (:meth:`LocalS3.go_down`): the listening socket
closes and requests on open connections are dropped, as when a server dies.

Clients use it exactly as S3, through ``storage_options``::

    with LocalS3() as s3:
        s3.make_bucket("data")
        fsspec.open("s3://data/x.bin", "wb", **s3.storage_options)

Run it on its own (``python tools/local_s3.py``) to get an endpoint for manual trials; it
prints the ``storage_options`` and serves until Ctrl-C.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from typing import Any

__all__ = ["LocalS3", "Request"]

_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message></Error>"
)


class Request:
    """One request the server answered: method, path (``/bucket/key``), query, Range header,
    status and bytes of body served."""

    __slots__ = ("method", "path", "query", "range", "status", "bytes")

    def __init__(self, method: str, path: str, query: str, range: str | None) -> None:
        self.method, self.path, self.query, self.range = method, path, query, range
        self.status = 0
        self.bytes = 0

    def __repr__(self) -> str:
        return f"<{self.method} {self.path}?{self.query} {self.range} -> {self.status}, {self.bytes} B>"


class LocalS3:
    """moto's S3 server on ``127.0.0.1:port`` (0: any free port) with one key pair."""

    def __init__(self, port: int = 0, key: str = "licstore-local-key", secret: str | None = None):
        self.key = key
        self.secret = secret or secrets.token_hex(20)
        self.region = "us-east-1"
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._down = False
        self._down_after: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> LocalS3:
        """Start serving (raises ImportError without moto[server], OSError if it cannot bind)."""
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", self._port, self._wsgi(app), threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)
            self._server = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def go_down(self, after: int = 0) -> None:
        """Stop serving ``after`` more requests from now: the listening socket closes (new
        connections are refused) and every request after that is dropped unanswered."""
        with self._lock:
            self._down_after = after
        if after == 0:
            self._close_listener()

    def _close_listener(self) -> None:
        with self._lock:
            self._down = True
            server = self._server
        if server is not None:
            threading.Thread(target=lambda: (server.shutdown(), server.server_close())).start()

    # -- what clients need ----------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options for this server, as for any S3-compatible endpoint."""
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint_url}

    def filesystem(self, **overrides: Any) -> Any:
        """A fresh ``s3fs.S3FileSystem`` for this server (no instance cache)."""
        import s3fs

        options = {**self.storage_options, **overrides}
        return s3fs.S3FileSystem(skip_instance_cache=True, **options)

    def make_bucket(self, name: str) -> str:
        fs = self.filesystem()
        if not fs.exists(name):
            fs.mkdir(name)
        return name

    # -- the request log ------------------------------------------------------------------------

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    def requests(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """Logged requests, optionally of one method and under one ``/bucket/key`` prefix."""
        with self._lock:
            log = list(self.log)
        return [
            r
            for r in log
            if (method is None or r.method == method) and (path is None or r.path.startswith(path))
        ]

    def bytes_served(self, path: str | None = None) -> int:
        return sum(r.bytes for r in self.requests(path=path))

    # -- the WSGI layer ---------------------------------------------------------------------------

    def _wsgi(self, app: Any) -> Any:
        def serve(environ: dict, start_response: Any) -> Any:
            record = Request(
                method=environ["REQUEST_METHOD"],
                path=environ.get("PATH_INFO", ""),
                query=environ.get("QUERY_STRING", ""),
                range=environ.get("HTTP_RANGE"),
            )
            with self._lock:
                if self._down_after is not None:
                    if self._down_after == 0:
                        self._down = True
                    self._down_after -= 1
                down = self._down
                self.log.append(record)
            if down:
                self._close_listener()
                _drop(environ)
                return []
            refusal = self._refusal(environ)
            if refusal is not None:
                code, message = refusal
                body = _ERROR.format(code=code, message=message).encode()
                record.status = 403
                if environ["REQUEST_METHOD"] == "HEAD":
                    body = b""
                start_response("403 Forbidden", [("Content-Type", "application/xml")])
                record.bytes = len(body)
                return [body]

            def start(status: str, headers: list, exc_info: Any = None) -> Any:
                record.status = int(status.split()[0])
                return start_response(status, headers, exc_info)

            def body() -> Any:
                for chunk in app(environ, start):
                    record.bytes += len(chunk)
                    yield chunk

            return body()

        return serve

    def _refusal(self, environ: dict) -> tuple[str, str] | None:
        """Why S3 would refuse this request's signature, or None if it is valid."""
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return "AccessDenied", "Access Denied"
        fields = dict(
            part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 ") :].split(",")
        )
        key, _, scope = fields.get("Credential", "").partition("/")
        if key != self.key:
            return (
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
            )
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        signed = fields.get("SignedHeaders", "").split(";")
        headers = {name: _header(environ, name) for name in signed}
        host = headers.get("host") or environ.get("HTTP_HOST", "")
        uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ["PATH_INFO"]
        request = AWSRequest(method=environ["REQUEST_METHOD"], url=f"http://{host}{uri}")
        for name, value in headers.items():
            request.headers[name] = value
        request.context["timestamp"] = headers.get("x-amz-date", "")
        region = scope.split("/")[1] if scope.count("/") >= 2 else self.region
        signer = S3SigV4Auth(Credentials(self.key, self.secret), "s3", region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not secrets.compare_digest(expected, fields.get("Signature", "")):
            return (
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you "
                "provided. Check your key and signing method.",
            )
        return None


def _header(environ: dict, name: str) -> str:
    if name == "content-type":
        return environ.get("CONTENT_TYPE", "")
    if name == "content-length":
        return environ.get("CONTENT_LENGTH", "")
    return environ.get("HTTP_" + name.upper().replace("-", "_"), "")


def _drop(environ: dict) -> None:
    """Close the client's connection without an answer (a server that died)."""
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


if __name__ == "__main__":
    import time

    with LocalS3(port=9000) as s3:
        print(f"serving S3 on {s3.endpoint_url}; storage_options = {s3.storage_options}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
