"""The feature distributions a version was trained to see, written into its manifest
(`features.reference`): what `recsys monitor drift` compares the ranking service's live counts with.

The ranker's columns are binned over the candidates the exported version itself makes for a sample of
its users (what serving will score, not the stage-A slices the ranker learned on, whose sources are
fitted on less of the log); the user and item rows over every user and item.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.common.drift import references
from services.common.ranker_features import ITEM_FEATURES, USER_FEATURES
from services.trainer.pipeline import Fitted

SAMPLE_USERS = 500


def feature_references(fitted: Fitted, sample_users: int = SAMPLE_USERS) -> dict[str, Any]:
    stage, config = fitted.stage, fitted.config
    users = sorted(stage.histories)
    rng = np.random.default_rng(config.seed)
    if len(users) > sample_users:
        users = [users[i] for i in np.sort(rng.choice(len(users), sample_users, replace=False))]
    blocks = [stage.features(u, stage.candidates(u, config), config) for u in users]
    names = config.feature_names
    matrix = np.vstack(blocks) if blocks else np.empty((0, len(names)), np.float32)
    return {
        "rows": int(matrix.shape[0]),
        "users": len(users),
        "ranker": {k: h.to_json() for k, h in references(names, matrix).items()},
        "user": {k: h.to_json() for k, h in references(USER_FEATURES, stage.user_rows).items()},
        "item": {k: h.to_json() for k, h in references(ITEM_FEATURES, stage.item_rows).items()},
    }
