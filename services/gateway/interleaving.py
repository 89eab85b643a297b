"""Team-draft interleaving of two rankers inside one response."""

from __future__ import annotations

import random

from recsys.v1 import common_pb2


def team_draft(
    a: list[common_pb2.ScoredItem], b: list[common_pb2.ScoredItem], k: int, rng: random.Random
) -> tuple[list[common_pb2.ScoredItem], dict[str, str]]:
    """Team-draft interleaving (Radlinski et al. 2008): each round a coin decides which team picks first,
    then each team adds its best item not yet picked. Returns the list and {item_id: "a" | "b"}.
    Scores are rewritten to k, k-1, ... (the two rankers' scores are not comparable)."""
    out: list[common_pb2.ScoredItem] = []
    team: dict[str, str] = {}
    lists = {"a": a, "b": b}
    pos = {"a": 0, "b": 0}

    def pick(name: str) -> bool:
        items = lists[name]
        while pos[name] < len(items) and items[pos[name]].item_id in team:
            pos[name] += 1
        if pos[name] >= len(items) or len(out) >= k:
            return False
        item = items[pos[name]]
        team[item.item_id] = name
        out.append(common_pb2.ScoredItem(item_id=item.item_id, source=item.source))
        return True

    while len(out) < k:
        order = ("a", "b") if rng.random() < 0.5 else ("b", "a")
        progressed = [pick(order[0]), pick(order[1])]
        if not any(progressed):
            break
    for i, item in enumerate(out):
        item.score = float(len(out) - i)
    return out, team
