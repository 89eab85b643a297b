"""`recsys items upsert FILE.jsonl`, `recsys items hide|unhide ID...`, `recsys similar --item I`: the live
catalogue and item pages through the gateway (its API key: env RECSYS_API_KEY, role admin for writes).

FILE.jsonl holds one item a line: {"item_id": "m1", "title": "...", "categories": ["Comedy"],
"tags": ["funny"], "published_at": "2026-11-30" or "published_at_ms": 1764460800000,
"attributes": {"lang": "en"}}. Every line is checked before anything is sent; a file is sent in
batches of 1000 (each written all or nothing).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.v1 import common_pb2
from services.common import tls
from services.common.catalogue import MAX_ITEMS

FIELDS = {"item_id", "title", "categories", "tags", "published_at", "published_at_ms", "attributes"}


class ItemsError(Exception):
    """A bad file or a refused call: one line for the user."""


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--category", action="append", default=[], help="only items in one of these")
    parser.add_argument("--not-category", action="append", default=[], help="no item in any of these")
    parser.add_argument("--published-after", help="only items published after (ISO date or time)")
    parser.add_argument("--published-before", help="only items published before (ISO date or time)")
    parser.add_argument(
        "--attribute", action="append", default=[], metavar="NAME=VALUE", help="only items with it"
    )


def add_arguments(commands: Any) -> None:
    items = commands.add_parser("items", help="the live catalogue: upsert, hide or unhide items")
    verbs = items.add_subparsers(dest="items_command", required=True)
    upsert = verbs.add_parser("upsert", help="add or replace the items of a JSON-lines file")
    upsert.add_argument("file", type=Path, help="one item a line (see `recsys items --help`)")
    hide = verbs.add_parser("hide", help="never recommend these items again (until unhidden)")
    unhide = verbs.add_parser("unhide", help="recommend these items again")
    for parser in (hide, unhide):
        parser.add_argument("ids", nargs="+", help="item ids")
    similar = commands.add_parser("similar", help="items like one item (an item page)")
    similar.add_argument("--item", required=True, help="item id")
    similar.add_argument("-k", type=int, default=10, help="items to return")
    add_filter_arguments(similar)
    for parser in (upsert, hide, unhide, similar):
        parser.add_argument(
            "--gateway", default="127.0.0.1:50051", help="gateway HOST:PORT (its API key: env RECSYS_API_KEY)"
        )
        tls.add_client_arguments(parser)


def _ms(text: str, what: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ItemsError(f"{what}: {text!r} is not an ISO date or time (e.g. 2026-11-30)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def filter_from_args(args: argparse.Namespace) -> common_pb2.ItemFilter:
    attributes = {}
    for pair in args.attribute:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ItemsError(f"--attribute {pair!r}: expected NAME=VALUE")
        attributes[name] = value
    return common_pb2.ItemFilter(
        include_categories=args.category,
        exclude_categories=args.not_category,
        published_after_ms=_ms(args.published_after, "--published-after") if args.published_after else 0,
        published_before_ms=_ms(args.published_before, "--published-before") if args.published_before else 0,
        attributes=attributes,
    )


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ItemsError(f"{where}: must be a list of strings")
    return value


def item_from_json(data: Any, where: str) -> common_pb2.CatalogueItem:
    if not isinstance(data, dict):
        raise ItemsError(f"{where}: must be a JSON object")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ItemsError(f"{where}: unknown field(s) {unknown} (known: {', '.join(sorted(FIELDS))})")
    item_id = data.get("item_id")
    if not isinstance(item_id, str) or not item_id.strip():
        raise ItemsError(f"{where}: item_id must be a non-empty string")
    attributes = data.get("attributes") or {}
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise ItemsError(f"{where}.attributes: must be an object of strings")
    published = data.get("published_at_ms", 0)
    if "published_at" in data:
        published = _ms(str(data["published_at"]), f"{where}.published_at")
    if not isinstance(published, int) or published < 0:
        raise ItemsError(f"{where}.published_at_ms: must be a non-negative integer")
    return common_pb2.CatalogueItem(
        item_id=item_id,
        title=str(data.get("title") or ""),
        categories=_strings(data.get("categories", []), f"{where}.categories"),
        tags=_strings(data.get("tags", []), f"{where}.tags"),
        published_at_ms=published,
        attributes=attributes,
    )


def read_items(path: Path) -> list[common_pb2.CatalogueItem]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ItemsError(f"{path}: cannot read ({e})") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise ItemsError(f"{path}:{number}: not JSON ({e.msg})") from None
        out.append(item_from_json(data, f"{path}:{number}"))
    if not out:
        raise ItemsError(f"{path}: holds no items")
    return out


def batches(items: list[common_pb2.CatalogueItem]) -> Iterator[list[common_pb2.CatalogueItem]]:
    for start in range(0, len(items), MAX_ITEMS):
        yield items[start : start + MAX_ITEMS]


def main(args: argparse.Namespace) -> int:
    import grpc

    from services.client import Client, api_key_from_env

    with Client(args.gateway, api_key=api_key_from_env(), tls=tls.client_from_args(args)) as client:
        try:
            if args.command == "similar":
                reply = client.similar_items(args.item, k=args.k, item_filter=filter_from_args(args))
                for rank, item in enumerate(reply.items, 1):
                    print(f"{rank:3d}. {item.item_id:<12} {item.score:9.4f}  ({item.source})")
                return 0
            if args.items_command == "upsert":
                items = read_items(args.file)
                version = 0
                for batch in batches(items):
                    version = client.upsert_items(batch).catalogue_version
                print(f"upserted {len(items)} items (catalogue version {version})")
                return 0
            reply_hidden = client.hide_items(args.ids, hide=args.items_command == "hide")
            print(
                f"{args.items_command}: {reply_hidden.changed} changed "
                f"(catalogue version {reply_hidden.catalogue_version})"
            )
            return 0
        except grpc.RpcError as e:
            raise ItemsError(f"{e.code().name}: {e.details()}") from e
