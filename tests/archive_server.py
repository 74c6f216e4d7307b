"""A loopback HTTP file server for download tests: serves in-memory files, honours
Range requests, and can be told to fail (503) or cut a response short."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ArchiveServer:
    files: dict[str, bytes] = field(default_factory=dict)
    # path -> list of planned misbehaviours, consumed one per request: "503" or ("cut", n_bytes)
    faults: dict[str, list] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    ranges: bool = True

    def start(self) -> "ArchiveServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                server.requests.append((path, self.headers.get("Range")))
                if path not in server.files:
                    self.send_error(404)
                    return
                fault = server.faults.get(path, []).pop(0) if server.faults.get(path) else None
                if fault == "503":
                    self.send_error(503)
                    return
                body, start, status = server.files[path], 0, 200
                requested = self.headers.get("Range")
                if requested and server.ranges:
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                payload = body[start:]
                if isinstance(fault, tuple) and fault[0] == "cut":
                    self.wfile.write(payload[: fault[1]])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
