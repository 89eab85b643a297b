"""`recsys keys add|remove`: manage the gateway's API keys file (format: services/gateway/keys.py).

`add` generates a key, writes only its hash (the file is replaced in one rename, never half-written) and
prints the key once on stdout, alone on its line, so `KEY=$(recsys keys add ...)` captures it; nothing
keeps it afterwards. A gateway watching the file accepts the new key, or refuses a removed one, within
its --api-keys-reload-s, without a restart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.gateway import keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`recsys keys ...` (the `keys` parser is created by services/cli.py)."""
    commands = parser.add_subparsers(dest="keys_command", required=True)
    add = commands.add_parser("add", help="generate a key, store its hash in the file, print the key once")
    add.add_argument("--file", type=Path, required=True, help="the keys file (created if missing)")
    add.add_argument("--name", required=True, help="the key's name in logs and metrics, e.g. backend-1")
    add.add_argument(
        "--role",
        action="append",
        default=[],
        help=f"a role the key holds, repeatable: {', '.join(keys.ROLES)}",
    )
    remove = commands.add_parser("remove", help="revoke the key with this name")
    add.add_argument(
        "--rate-per-s", type=float, help="calls per second the key may make per gateway (default: no limit)"
    )
    add.add_argument(
        "--burst", type=int, help="calls the key may make at once (default: the rate, at least 1)"
    )
    remove.add_argument("--file", type=Path, required=True, help="the keys file")
    remove.add_argument("--name", required=True, help="the name of the key to remove")


def main(args: argparse.Namespace) -> int:
    try:
        if args.keys_command == "add":
            key = keys.add(args.file, args.name, args.role, args.rate_per_s, args.burst)
            print(key)
            print(
                f"added {args.name!r} ({', '.join(dict.fromkeys(args.role))}) to {args.file}: the key above is "
                "shown once and stored nowhere; clients send it as `authorization: Bearer <key>`",
                file=sys.stderr,
            )
        else:
            keys.remove(args.file, args.name)
            print(f"removed {args.name!r} from {args.file}", file=sys.stderr)
    except (keys.KeyFileError, OSError) as e:
        print(f"recsys keys {args.keys_command}: {e}", file=sys.stderr)
        return 2
    return 0
