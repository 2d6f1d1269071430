"""A stand-in for a service in launcher tests (the real ones are not needed to test the launcher).

fake_service.py serve PORT_VARIABLE   serve GET /health/... on $PORT_VARIABLE; exit after
                                      $FAKE_EXIT_AFTER seconds if set; print the variables named
                                      in $FAKE_PRINT_ENV (comma-separated) first
fake_service.py cloud PORT_VARIABLE   as serve, after writing $FAKE_TOKEN to $CLOUD_API_TOKEN_FILE
                                      when that file does not exist (a cloud's first start)
fake_service.py idle                  a worker: print a line and wait to be stopped
fake_service.py bundle MODEL_ROOT     write a fake bundle (MODEL_ROOT/det_fake/current) and exit
fake_service.py seed ARGS...          print its arguments; exit $FAKE_SEED_STATUS (default 0)
fake_service.py fail                  print a message and exit 3
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
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


def print_env() -> None:
    for name in filter(None, os.environ.get("FAKE_PRINT_ENV", "").split(",")):
        print(f"{name}={os.environ.get(name, '')}", flush=True)


def serve(port_variable: str) -> None:
    print_env()
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
    elif command == "cloud":
        token_file = Path(os.environ["CLOUD_API_TOKEN_FILE"])
        if not token_file.exists() and os.environ.get("FAKE_TOKEN"):
            token_file.parent.mkdir(parents=True, exist_ok=True)
            token_file.write_text(os.environ["FAKE_TOKEN"] + "\n")
            print(f"first start: token written to {token_file}", flush=True)
        serve(args[0])
    elif command == "idle":
        print_env()
        print("working", flush=True)
        while True:
            time.sleep(1)
    elif command == "bundle":
        current = Path(args[0]) / "det_fake" / "current"
        current.mkdir(parents=True)
        print(f"wrote {current}", flush=True)
    elif command == "seed":
        print_env()
        print("seed " + " ".join(args), flush=True)
        sys.exit(int(os.environ.get("FAKE_SEED_STATUS", "0")))
    else:
        print("cannot do that", flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
