"""Small but real artifact versions for the features tests: the files the online store reads, written with
the same `staging_dir` + `publish` the trainer uses (so `open_version` verifies them like any version).

Values are random float32 plus a few awkward bit patterns (-0.0, inf, a subnormal, the largest float) so
that "bit for bit" means something; ids include spaces, colons, glob characters and non-ASCII text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.common.artifacts import ArtifactVersion, open_version, publish, staging_dir

ITEM_FEATURES = ["popularity", "mean_rating", "age_days", "genre_action"]
USER_FEATURES = ["n_ratings", "mean_rating", "days_active"]


@dataclass(frozen=True)
class Tables:
    version: ArtifactVersion
    item_ids: list[str]
    item_features: npt.NDArray[np.float32]
    user_ids: list[str]
    user_features: npt.NDArray[np.float32]
    user_history: dict[str, list[str]]


def build_version(root: Path, version: str, n_items: int = 60, n_users: int = 12, seed: int = 0) -> Tables:
    rng = np.random.default_rng(seed)
    item_ids = [f"i{i}" for i in range(n_items - 4)] + ["item with space", "a:b:c", "glob*[x]?", "filmé 🎬"]
    user_ids = [f"u{i}" for i in range(n_users - 1)] + ["user:with:colons"]
    item_features = rng.standard_normal((n_items, len(ITEM_FEATURES))).astype(np.float32)
    item_features[0, :] = np.array([-0.0, np.inf, 1e-45, np.finfo(np.float32).max], dtype=np.float32)
    user_features = rng.standard_normal((n_users, len(USER_FEATURES))).astype(np.float32)
    user_features[0, 0] = -0.0
    history = {
        user: [item_ids[j] for j in rng.choice(n_items, size=int(rng.integers(1, 8)), replace=False)]
        for user in user_ids
    }
    staging = staging_dir(root, version)
    (staging / "item_ids.json").write_text(json.dumps(item_ids))
    (staging / "user_ids.json").write_text(json.dumps(user_ids))
    (staging / "user_history.json").write_text(json.dumps(history))
    np.save(staging / "item_features.npy", item_features)
    np.save(staging / "user_features.npy", user_features)
    publish(
        root,
        staging,
        version,
        {
            "features": {"item": ITEM_FEATURES, "user": USER_FEATURES, "ranker": []},
        },
    )
    return Tables(
        version=open_version(root, version),
        item_ids=item_ids,
        item_features=item_features,
        user_ids=user_ids,
        user_features=user_features,
        user_history=history,
    )
