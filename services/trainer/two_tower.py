"""Training the two-tower source (services.common.sources.two_tower) with PyTorch on CPU: the optional
extra `recsys[deep]`, imported only when the source is fitted.

Examples are the slice's interactions in time order: each user's next new item (the target) from the
distinct items before it (the user tower pools the latest `window` of them, as serving pools the live
history). Each user's latest example is held out for early stopping: after every epoch, recall@k of
those items against the whole catalogue (the user's earlier items excluded, as served); the best
epoch's weights are kept, and training stops after `patience` epochs without a better one.

The loss is the in-batch sampled softmax: each example's target against the other targets of its batch,
on cosine / temperature, with the log-Q correction (Yi et al. 2019): an item's logit is lowered by the log
of how often it is drawn as a negative, its share of the targets, so popular items are not
over-penalised for being sampled more. A batch's duplicates of an example's target are not negatives.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as tf

from services.common.sources.base import F32, FitData, FitError, Rows
from services.common.sources.two_tower import TwoTowerParams, UserTower
from services.trainer.torch_threads import torch_threads

log = logging.getLogger(__name__)

#: Validation users scored per call (catalogue-wide scores: users x items floats).
SCORE_CHUNK = 1024


@dataclass(frozen=True)
class Examples:
    """Padded recent items before each target (most recent first; `pad` fills), the number of distinct
    items before it, its target and its user."""

    recent: npt.NDArray[np.int64]  # (examples, window)
    prior: npt.NDArray[np.int64]
    targets: Rows
    users: Rows

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def take(self, rows: Rows) -> Examples:
        return Examples(self.recent[rows], self.prior[rows], self.targets[rows], self.users[rows])


def examples(data: FitData, window: int) -> Examples:
    """Every interaction with an item new to its user, with the user's items before it."""
    pad = data.n_items
    order = np.argsort(data.event_users, kind="stable")  # by user, each user's events in time order
    users, items = data.event_users[order], data.event_items[order]
    recent: list[list[int]] = []
    prior: list[int] = []
    targets: list[int] = []
    owners: list[int] = []
    bounds = np.flatnonzero(np.diff(users)) + 1
    for start, end in zip(np.r_[0, bounds], np.r_[bounds, users.size], strict=True):
        seen: list[int] = []  # distinct, oldest first; a repeat moves to the end (most recent)
        known: set[int] = set()
        for item in items[start:end].tolist():
            if item in known:
                seen.remove(item)
                seen.append(item)
                continue
            if seen:
                latest = seen[-window:][::-1]
                recent.append(latest + [pad] * (window - len(latest)))
                prior.append(len(seen))
                targets.append(item)
                owners.append(int(users[start]))
            seen.append(item)
            known.add(item)
    return Examples(
        np.array(recent, dtype=np.int64).reshape(-1, window),
        np.array(prior, dtype=np.int64),
        np.array(targets, dtype=np.int64),
        np.array(owners, dtype=np.int64),
    )


def held_out(ex: Examples) -> tuple[Rows, Rows]:
    """(training rows, validation rows): each user's latest example validates, when the user has two."""
    last = np.flatnonzero(np.r_[ex.users[1:] != ex.users[:-1], True])
    counts = np.diff(np.r_[-1, last])
    validation = last[counts >= 2]
    training = np.setdiff1d(np.arange(len(ex)), validation)
    return training, validation


class Towers(nn.Module):
    """Both towers. The user tower's inputs are linear in the pooled items (see `user_tower`), so the
    numpy tower computes the same function from one pooled table."""

    def __init__(self, content: torch.Tensor, popularity: torch.Tensor, params: TwoTowerParams) -> None:
        super().__init__()
        n_items, width = content.shape
        self.pad = n_items
        # the padding row (index n_items) is zero and pooled past (embedding_bag's padding_idx)
        self.register_buffer("content", torch.cat([content, torch.zeros(1, width)]))
        self.register_buffer("popularity", torch.cat([popularity, torch.zeros(1)]).reshape(-1, 1))
        d, h = params.dim, params.hidden
        # small id embeddings: an item without interactions keeps a near-zero id part, so its content
        # places it (the cold-item path)
        self.item_id = nn.Embedding(n_items, d)
        self.history_id = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        for embedding in (self.item_id, self.history_id):
            nn.init.normal_(embedding.weight, std=0.01)
        with torch.no_grad():
            self.history_id.weight[n_items].zero_()
        self.item_content = nn.Linear(width, d, bias=False)
        self.history_content = nn.Linear(width, d, bias=False)
        self.item_mlp = nn.Sequential(nn.Linear(2 * d, h), nn.ReLU(), nn.Linear(h, d))
        self.user_1 = nn.Linear(d + 2, h)
        self.user_2 = nn.Linear(h, d)

    def items(self, rows: torch.Tensor) -> torch.Tensor:
        content = self.get_buffer("content")[rows]
        z = torch.cat([self.item_id(rows), self.item_content(content)], dim=1)
        return tf.normalize(self.item_mlp(z), dim=1)

    def users(self, recent: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        def pooled(weight: torch.Tensor) -> torch.Tensor:
            return tf.embedding_bag(recent, weight, mode="mean", padding_idx=self.pad)

        ids = pooled(self.history_id.weight)
        content = self.history_content(pooled(self.get_buffer("content")))
        popularity = pooled(self.get_buffer("popularity"))
        x = torch.cat([ids + content, popularity, torch.log1p(prior.to(torch.float32)).reshape(-1, 1)], dim=1)
        return tf.normalize(self.user_2(torch.relu(self.user_1(x))), dim=1)

    def user_tower(self) -> UserTower:
        """The numpy user tower: the per-item table (history embedding + content projection, and
        log-popularity) and the MLP's weights."""
        with torch.no_grad():
            n = self.pad
            content = self.get_buffer("content")[:n]
            table = torch.cat(
                [
                    self.history_id.weight[:n] + self.history_content(content),
                    self.get_buffer("popularity")[:n],
                ],
                dim=1,
            )

            def array(t: torch.Tensor) -> F32:
                out: F32 = np.ascontiguousarray(t.detach().numpy(), dtype=np.float32)
                return out

            return UserTower(
                array(table),
                array(self.user_1.weight),
                array(self.user_1.bias),
                array(self.user_2.weight),
                array(self.user_2.bias),
            )

    def item_vectors(self) -> F32:
        with torch.no_grad():
            out: F32 = np.ascontiguousarray(self.items(torch.arange(self.pad)).numpy(), dtype=np.float32)
        return out


def recall(model: Towers, data: FitData, ex: Examples, k: int) -> float:
    """Share of the examples whose target is among the k best items for their user, the user's other
    items of the slice excluded."""
    if len(ex) == 0:
        return 0.0
    with torch.no_grad():
        vectors = model.items(torch.arange(data.n_items))
        hits = 0
        for start in range(0, len(ex), SCORE_CHUNK):
            part = ex.take(np.arange(start, min(len(ex), start + SCORE_CHUNK)))
            scores = model.users(torch.from_numpy(part.recent), torch.from_numpy(part.prior)) @ vectors.T
            target = scores[torch.arange(len(part)), torch.from_numpy(part.targets)].clone()
            history = data.matrix[part.users]
            rows, cols = history.nonzero()
            scores[
                torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(cols.astype(np.int64))
            ] = -torch.inf
            hits += int(((scores > target[:, None]).sum(dim=1) < k).sum())
    return hits / len(ex)


@dataclass(frozen=True)
class Trained:
    vectors: F32  # (items, dim) the item tower's, unit length
    tower: UserTower
    validation_recall: list[float]  # after each epoch run
    best_epoch: int  # whose weights these are (0-based)
    validation: Examples


def train(data: FitData, params: TwoTowerParams) -> Trained:
    """The towers of the epoch of best validation recall."""
    ex = examples(data, params.window)
    training, validation = held_out(ex)
    if training.size < 2:
        raise FitError("twotower", f"needs at least 2 examples to train on, the slice gives {training.size}")
    counts = np.bincount(ex.targets[training], minlength=data.n_items).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32))
    item_counts = data.item_counts()
    popularity = np.log1p(item_counts) / max(1.0, float(np.log1p(item_counts.max())))
    with torch_threads(data.threads):
        torch.manual_seed(data.seed)
        model = Towers(
            torch.from_numpy(np.ascontiguousarray(data.content, dtype=np.float32)),
            torch.from_numpy(popularity.astype(np.float32)),
            params,
        )
        optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
        rng = np.random.default_rng(data.seed)
        val = ex.take(validation)
        best, best_state, best_epoch, stale = -1.0, copy.deepcopy(model.state_dict()), 0, 0
        history: list[float] = []
        for epoch in range(params.epochs):
            model.train()
            shuffled = rng.permutation(training)
            for start in range(0, training.size, params.batch):
                batch = ex.take(shuffled[start : start + params.batch])
                if len(batch) < 2:
                    continue
                loss = batch_loss(model, batch, log_q, params)
                optimiser.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
            model.eval()
            found = recall(model, data, val, params.validation_k) if len(val) else 0.0
            history.append(round(found, 6))
            if found > best:
                best, best_state, best_epoch, stale = found, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= params.patience:
                    break
        model.load_state_dict(best_state)
        log.info(
            "two-tower trained",
            extra={
                "epochs": len(history),
                "best_epoch": best_epoch,
                f"validation_recall@{params.validation_k}": history,
            },
        )
        vectors, tower = model.item_vectors(), model.user_tower()
    if not np.isfinite(vectors).all():
        raise FitError("twotower", "the fit diverged (non-finite item vectors)")
    return Trained(vectors, tower, history, best_epoch, val)


def batch_loss(model: Towers, batch: Examples, log_q: torch.Tensor, params: TwoTowerParams) -> torch.Tensor:
    targets = torch.from_numpy(batch.targets)
    users = model.users(torch.from_numpy(batch.recent), torch.from_numpy(batch.prior))
    logits = users @ model.items(targets).T / params.temperature
    if params.logq:
        logits = logits - log_q[targets][None, :]
    same = targets[:, None] == targets[None, :]
    logits = logits.masked_fill(same & ~torch.eye(len(batch), dtype=torch.bool), -torch.inf)
    return tf.cross_entropy(logits, torch.arange(len(batch)))
