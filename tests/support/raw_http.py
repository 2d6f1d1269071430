"""Raw HTTP/1.1 over a socket, for what an HTTP client library will not send: bodies that stop short,
lengths that lie."""

from __future__ import annotations

import socket


def raw_exchange(port: int, request: bytes, wait_s: float = 20) -> tuple[bytes, bool]:
    """Send `request` on a fresh connection to 127.0.0.1:`port`, then read until the server closes it
    (or `wait_s` passes). Returns what arrived and whether the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
    return received, True
