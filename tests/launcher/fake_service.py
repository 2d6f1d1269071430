"""A stand-in for an edge service in launcher tests (the real ones are not needed to test the launcher).

fake_service.py serve PORT_VARIABLE   serve GET /health/live on $PORT_VARIABLE; exit after
                                      $FAKE_EXIT_AFTER seconds if set
fake_service.py bundle MODEL_ROOT     write a fake bundle (MODEL_ROOT/det_fake/current) and exit
fake_service.py fail                  print a message and exit 3
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "pid": os.getpid()}).encode()
        self.send_response(200 if self.path.startswith("/health/") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(port_variable: str) -> None:
    port = int(os.environ[port_variable])
    server = HTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on {port}", flush=True)
    exit_after = os.environ.get("FAKE_EXIT_AFTER")
    if exit_after:
        threading.Timer(float(exit_after), lambda: os._exit(7)).start()
    server.serve_forever()


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "serve":
        serve(args[0])
    elif command == "bundle":
        current = Path(args[0]) / "det_fake" / "current"
        current.mkdir(parents=True)
        print(f"wrote {current}", flush=True)
    else:
        print("cannot do that", flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
