"""`python -m edge.api.tokens add|list|remove`: the tokens this edge accepts without a cloud.

    python -m edge.api.tokens add line-3              # prints a new token once; only its hash is kept
    python -m edge.api.tokens add line-4 --token io_… # lists a token you already have (a cloud one)
    python -m edge.api.tokens add ops --admin         # an operator token (edge config, status, metrics)
    python -m edge.api.tokens list
    python -m edge.api.tokens remove line-3

The file is `EDGE_LOCAL_TOKENS_FILE` (default `<EDGE_DATA_DIR>/tokens.json`); a running edge-api
picks up a change within a second.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.api.auth.local_tokens import LocalTokensError, add_token, read_tokens, remove_token
from edge.api.auth.principal import Role
from edge.api.settings import EdgeSettings

NEW_TOKEN_PREFIX = "io_edge_"
# The SDK refuses a token shorter than this, or whose first 20 characters are not [A-Za-z0-9_].
MIN_TOKEN_CHARS = 20


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edge.api.tokens", description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, help="the token file (default: from EDGE_* settings)")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="accept a token (a new one unless --token)")
    add.add_argument("name")
    add.add_argument("--token", help="the token to accept (default: a new random one, printed once)")
    add.add_argument("--admin", action="store_true", help="an edge operator token")
    commands.add_parser("list", help="the accepted tokens (names and hash prefixes)")
    remove = commands.add_parser("remove", help="stop accepting a token")
    remove.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path: Path = args.file or EdgeSettings().local_tokens_path
    try:
        if args.command == "add":
            token = args.token or NEW_TOKEN_PREFIX + secrets.token_hex(24)
            snippet = token[:MIN_TOKEN_CHARS]
            if len(token) < MIN_TOKEN_CHARS or not all(
                c.isascii() and (c.isalnum() or c == "_") for c in snippet
            ):
                print("a token needs at least 20 characters, the first 20 of [A-Za-z0-9_]", file=sys.stderr)
                return 2
            added = add_token(path, token, args.name, Role.ADMIN if args.admin else Role.DEVICE)
            print(f"added {added.name} ({added.role}) to {path}")
            if not args.token:
                print(token)
        elif args.command == "list":
            for t in read_tokens(path):
                print(f"{t.name}\t{t.role}\tsha256:{t.sha256[:12]}…\t{t.created_at}")
        elif not remove_token(path, args.name):
            print(f"no token named {args.name!r} in {path}", file=sys.stderr)
            return 1
        else:
            print(f"removed {args.name} from {path}")
    except LocalTokensError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
