"""A tiny WSGI service that checks Tokenward access tokens, as a Flask or Django app would.

Run by ``test_verifier_second_process.py`` in its own process::

    python wsgi_verifier_service.py <issuer> <redis url or -> <min refetch interval>

It prints ``port <n>`` once it listens (an ephemeral port on 127.0.0.1) and answers:

* ``GET /whoami``: 200 ``{"sub", "sid"}`` for a good ``Authorization: Bearer`` token, or the
  problem+json of the refusal;
* ``GET /keys``: ``{"kids": [...]}``, the key ids the verifier currently trusts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from tokenward import Verifier
from tokenward.errors import TokenwardError

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_app(verifier: Verifier) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        status, media, body = "404 Not Found", "application/json", {"error": "no such path"}
        if path == "/keys":
            status, body = "200 OK", {"kids": sorted(verifier.key_ids)}
        elif path == "/whoami":
            try:
                claims = verifier.verify_authorization(environ.get("HTTP_AUTHORIZATION"))
            except TokenwardError as exc:
                # What a Flask errorhandler for TokenwardError would do.
                status = f"{exc.status} {exc.title}"
                media = "application/problem+json"
                body = {
                    "type": f"urn:tokenward:problem:{exc.slug}",
                    "title": exc.title,
                    "status": exc.status,
                    "detail": exc.detail,
                }
            else:
                status, body = "200 OK", {"sub": claims.sub, "sid": claims.sid}
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", media), ("Content-Length", str(len(data)))])
        return [data]

    return app


def main() -> None:
    issuer, redis_url, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
    verifier = Verifier(
        issuer,
        redis_url=None if redis_url == "-" else redis_url,
        min_refetch_interval=interval,
    )
    verifier.start()
    server = make_server("127.0.0.1", 0, make_app(verifier), handler_class=QuietHandler)
    print(f"port {server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        verifier.close()


if __name__ == "__main__":
    main()
