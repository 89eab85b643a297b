"""How an item's content vector is made from its genres and tags, as a version's content source knows
them: the genres one-hot, L2-normalised; the TF-IDF of the tags (tf: how many times the item was given
the tag) over the tags the fit kept, with the fit's idf, L2-normalised; both side by side and, for an
item with tags, the row L2-normalised again (services.trainer.content builds every trained item's row
this way at once). The version exports its space, so the retrieval service gives an item upserted after
training the vector a retrain would start it from: its categories as genres, its tags weighted by the
trained idf (a tag the fit never kept adds nothing).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.common.artifacts import ArtifactError, ArtifactVersion

F32 = npt.NDArray[np.float32]

CONTENT_SPACE_FILE = "content_space.json"


def normalise_tag(text: str) -> str:
    """ "Pixar" and "pixar " are one tag."""
    return text.strip().lower()


@dataclass(frozen=True)
class ContentSpace:
    genres: tuple[str, ...]
    tags: tuple[str, ...]  # the tag columns, after the genre columns
    idf: tuple[float, ...]  # one per tag column

    @property
    def genre_width(self) -> int:
        """The genre part's width: one column even for a catalogue without genres."""
        return max(1, len(self.genres))

    @property
    def dim(self) -> int:
        return self.genre_width + len(self.tags)

    def vector(self, genres: Iterable[str], tags: Sequence[str]) -> F32:
        out = np.zeros(self.dim, dtype=np.float32)
        genre_col = {g: j for j, g in enumerate(self.genres)}
        cols = sorted({genre_col[g] for g in genres if g in genre_col})
        if cols:
            out[cols] = 1.0 / math.sqrt(len(cols))
        tag_col = {t: self.genre_width + j for j, t in enumerate(self.tags)}
        counts = Counter(tag_col[t] for t in map(normalise_tag, tags) if t in tag_col)
        if counts:
            part = np.zeros(self.dim, dtype=np.float64)
            for col, tf in counts.items():
                part[col] = tf * self.idf[col - self.genre_width]
            part /= np.linalg.norm(part)
            out = (out + part).astype(np.float32)
            out /= np.linalg.norm(out)
        return out

    def save(self, directory: Path) -> None:
        payload = {"genres": list(self.genres), "tags": list(self.tags), "idf": list(self.idf)}
        (directory / CONTENT_SPACE_FILE).write_text(json.dumps(payload, ensure_ascii=False) + "\n")

    @classmethod
    def read(cls, version: ArtifactVersion) -> ContentSpace:
        what = f"artifact {version.version}: {CONTENT_SPACE_FILE}"
        try:
            raw = json.loads(version.file(CONTENT_SPACE_FILE).read_text(encoding="utf-8"))
            space = cls(
                tuple(str(g) for g in raw["genres"]),
                tuple(str(t) for t in raw["tags"]),
                tuple(float(v) for v in raw["idf"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{what}: cannot read it ({e})") from e
        if len(space.tags) != len(space.idf) or not all(math.isfinite(v) and v > 0 for v in space.idf):
            raise ArtifactError(f"{what}: needs one finite idf > 0 per tag")
        return space
