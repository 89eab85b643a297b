"""Writing a fitted pipeline as an artifact version (docs/artifacts.md): what the services load.

    item_ids.json, items.csv          the catalogue (rows of every item matrix), titles and genres
    item_features.npy                 the item feature rows (the ranking service; GetItemFeatures)
    user_ids.json, user_features.npy  the user feature rows (the features service)
    user_history.json                 every user's items, most recent first (the features service)
    <source>.*                        each source's own files (services.common.sources)
    ranker_<i>.txt                    the ranker's LightGBM models (services.common.ranker)
    ranker.onnx                       or a deep family's model (manifest ranker.family, ranker.inputs)
    interactions.npz                  the interactions it was fitted on (the next incremental run's base)
    manifest.json                     pipeline settings, feature schema, metrics, sha256 of every file

`recsys train` and `recsys synth` both write through `export`.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from services.common import ranker as served_ranker
from services.common.artifacts import ArtifactVersion, new_version_name, publish, staging_dir
from services.common.ranker_features import ITEM_FEATURES, USER_FEATURES
from services.trainer.events import INTERACTIONS_FILE, Interactions
from services.trainer.pipeline import Fitted
from services.trainer.ranker import Booster
from services.trainer.reference import feature_references

#: The file the ranking service diversifies (MMR) with when the pipeline has no content source.
DIVERSITY_FILE = "diversity.vectors.npy"


def export(
    root: Path,
    fitted: Fitted,
    manifest: dict[str, Any],
    *,
    promote: bool = True,
    interactions: Interactions | None = None,
) -> ArtifactVersion:
    """Publish `fitted` as a new version under `root` and (`promote`) point CURRENT at it; `manifest` adds
    data, metrics and training details to what the pipeline itself records; `interactions` (what it was
    fitted on) is kept for the next incremental run. Nothing is left half-written."""
    import numpy as np

    version = new_version_name()
    root.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(root, version)
    try:
        stage, universe = fitted.stage, fitted.universe

        def dump(name: str, value: Any) -> None:
            (staging / name).write_text(json.dumps(value, ensure_ascii=False) + "\n")

        dump("item_ids.json", universe.item_ids)
        with (staging / "items.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["item_id", "title", "genres"])
            names = universe.genre_names
            for row, item in enumerate(universe.item_ids):
                genres = "|".join(
                    names[g] for g in np.flatnonzero(universe.genres[row] > 0) if g < len(names)
                )
                writer.writerow([item, universe.titles[row], genres])
        np.save(staging / "item_features.npy", stage.item_rows.astype(np.float32))
        dump("user_ids.json", universe.user_ids)
        np.save(staging / "user_features.npy", stage.user_rows.astype(np.float32))
        dump("user_history.json", {u: universe.ids(h.items) for u, h in sorted(stage.histories.items())})
        for source in stage.sources.values():
            source.save(staging)
        stage.content_space.save(staging)
        diversity = "content.vectors.npy"
        if "content" not in stage.sources:
            diversity = DIVERSITY_FILE
            np.save(staging / DIVERSITY_FILE, universe.genres.astype(np.float32))
        if interactions is not None:
            interactions.save(staging / INTERACTIONS_FILE)
        family = fitted.config.ranker.family
        ranker_info: dict[str, Any] = {"family": family, "models": len(fitted.ranker.models)}
        if family == "lightgbm":
            for i, model in enumerate(fitted.ranker.models):
                assert isinstance(model, Booster)
                model.booster.save_model(str(staging / served_ranker.model_file(i)))
        else:
            ranker_info.update(export_onnx(staging, fitted))
        full = {
            **manifest,
            "pipeline": {
                **fitted.config.describe(),
                "index": {
                    name: getattr(source, "index_info", None)
                    for name, source in stage.sources.items()
                    if getattr(source, "index_info", None)
                },
            },
            "features": {
                "user": list(USER_FEATURES),
                "item": list(ITEM_FEATURES),
                "ranker": fitted.config.feature_names,
                "dtype": "float32",
                "reference": feature_references(fitted),
            },
            "ranker": {**ranker_info, "fit": fitted.info},
            "diversity": {"file": diversity},
        }
        return publish(root, staging, version, full, promote=promote)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_onnx(staging: Path, fitted: Fitted) -> dict[str, Any]:
    """Write the deep ranker as `ranker.onnx`, checked against torch on real candidate rows (some users'
    candidates in the fitted pipeline); the manifest's description of its inputs."""
    import numpy as np

    from services.trainer.deep_ranker import INPUTS, OUTPUT, DeepModel

    (model,) = fitted.ranker.models
    assert isinstance(model, DeepModel)
    stage = fitted.stage
    users = sorted(stage.histories)[:: max(1, len(stage.histories) // 20)]
    cands = [stage.candidates(u, fitted.config) for u in users]
    probe = np.vstack([stage.features(u, c, fitted.config) for u, c in zip(users, cands, strict=True)])
    rows = np.concatenate([c.rows for c in cands]).astype(np.int64)
    error = model.export_onnx(staging / served_ranker.ONNX_FILE, probe, rows)
    return {
        "file": served_ranker.ONNX_FILE,
        "inputs": {
            INPUTS[0]: fitted.config.feature_names,
            INPUTS[1]: "item rows of item_ids.json (-1 unknown)",
        },
        "output": OUTPUT,
        "onnx_max_abs_error": error,
    }
