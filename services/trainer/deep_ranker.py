"""The deep ranker families, DCN-v2 (Wang et al. 2021) and DeepFM (Guo et al. 2017), trained with PyTorch
on CPU (the optional extra `recsys[deep]`) on the groups LightGBM gets (services.trainer.ranker.Groups):
the served feature schema, plus an embedding of the candidate's item row. Served as ONNX
(services.ranking.onnx_scorer), so the ranking service needs onnxruntime, never torch.

Both take the raw feature rows: standardisation (the training rows' mean and std) and missing values
(NaN -> the mean) are part of the model, so the exported graph scores exactly what `assemble` builds.
The loss is listwise: a softmax over each group's candidates against its labels (the groups without a
positive teach nothing and are left out, as for LightGBM).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from services.trainer.ranker import Groups, RankerParams
from services.trainer.torch_threads import torch_threads

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Rows = npt.NDArray[np.int64]

#: The ONNX graph's inputs and output (the ranking service checks them against the manifest).
INPUTS = ("features", "items")
OUTPUT = "scores"
OPSET = 17
#: Exported and torch scores must agree to this.
TOLERANCE = 1e-5


class Inputs(nn.Module):
    """Raw rows -> standardised, missing values at the mean (0), clipped; item rows -> embedding rows
    (an unknown item, row -1, gets the last one)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_items: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.unknown = n_items

    def forward(self, features: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (features - self.get_buffer("mean")) / self.get_buffer("std")
        x = torch.clamp(torch.where(torch.isnan(x), torch.zeros_like(x), x), -10.0, 10.0)
        rows = torch.where(items < 0, torch.full_like(items, self.unknown), items)
        return x, rows


class DcnV2(nn.Module):
    """Cross network (full-rank cross layers x_{l+1} = x0 * (W x_l + b) + x_l) beside a deep network,
    over the features and the item embedding."""

    def __init__(self, inputs: Inputs, width: int, n_items: int, params: RankerParams) -> None:
        super().__init__()
        self.inputs = inputs
        self.item = nn.Embedding(n_items + 1, params.deep_embedding)
        d = width + params.deep_embedding
        self.cross = nn.ModuleList(nn.Linear(d, d) for _ in range(params.deep_cross_layers))
        h = params.deep_hidden
        self.deep = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.head = nn.Linear(d + h, 1)

    def forward(self, features: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        x, rows = self.inputs(features, items)
        x0 = torch.cat([x, self.item(rows)], dim=1)
        xl = x0
        for layer in self.cross:
            xl = x0 * layer(xl) + xl
        out: torch.Tensor = self.head(torch.cat([xl, self.deep(x0)], dim=1)).squeeze(1)
        return out


class DeepFm(nn.Module):
    """First-order terms, pairwise factorisation-machine interactions of the fields (each feature's
    embedding scaled by its value, and the item's embedding), and a deep network over the same
    embeddings, summed."""

    def __init__(self, inputs: Inputs, width: int, n_items: int, params: RankerParams) -> None:
        super().__init__()
        self.inputs = inputs
        k = params.deep_embedding
        self.fields = nn.Parameter(torch.randn(width, k) * 0.01)
        self.item = nn.Embedding(n_items + 1, k)
        self.item_bias = nn.Embedding(n_items + 1, 1)
        nn.init.zeros_(self.item_bias.weight)
        self.linear = nn.Linear(width, 1)
        h = params.deep_hidden
        self.deep = nn.Sequential(
            nn.Linear((width + 1) * k, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1)
        )

    def forward(self, features: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        x, rows = self.inputs(features, items)
        e = torch.cat([x.unsqueeze(2) * self.fields.unsqueeze(0), self.item(rows).unsqueeze(1)], dim=1)
        fm = 0.5 * (e.sum(dim=1).pow(2) - e.pow(2).sum(dim=1)).sum(dim=1)
        first = self.linear(x).squeeze(1) + self.item_bias(rows).squeeze(1)
        out: torch.Tensor = first + fm + self.deep(e.flatten(1)).squeeze(1)
        return out


FAMILIES: dict[str, type[DcnV2] | type[DeepFm]] = {"dcnv2": DcnV2, "deepfm": DeepFm}


class DeepModel:
    """A trained deep ranker as an Ensemble model (services.common.ranker.Model)."""

    def __init__(self, module: nn.Module, family: str, width: int, threads: int = 1) -> None:
        self.module = module.eval()
        self.family = family
        self.width = width
        self.threads = threads

    def predict(self, matrix: F32, items: Rows | None = None) -> F64:
        rows = items if items is not None else np.full(matrix.shape[0], -1, dtype=np.int64)
        with torch_threads(self.threads), torch.no_grad():
            out = self.module(
                torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)), torch.from_numpy(rows)
            )
        return np.asarray(out.numpy(), dtype=np.float64)

    def contributions(self, matrix: F32) -> F64:
        raise NotImplementedError("per-feature contributions are computed for tree rankers only")

    def export_onnx(self, path: Path, probe: F32, probe_items: Rows) -> float:
        """Write the model as ONNX (`INPUTS` -> `OUTPUT`, any number of rows) and return the largest
        difference between onnxruntime's and torch's scores of the probe rows; ValueError past
        TOLERANCE (nothing is exported that would not score as trained)."""
        import onnxruntime as ort

        example = (torch.from_numpy(probe[:2].copy()), torch.from_numpy(probe_items[:2].copy()))
        with warnings.catch_warnings():
            # the TorchScript-based exporter: the torch.export-based one needs onnxscript as well, for
            # these feed-forward graphs the two write the same operators
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                self.module,
                example,
                str(path),
                dynamo=False,
                input_names=list(INPUTS),
                output_names=[OUTPUT],
                dynamic_axes={name: {0: "rows"} for name in (*INPUTS, OUTPUT)},
                opset_version=OPSET,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        exported = session.run([OUTPUT], {"features": probe, "items": probe_items})[0]
        error = float(
            np.max(np.abs(np.asarray(exported, dtype=np.float64) - self.predict(probe, probe_items)))
        )
        if not error <= TOLERANCE:
            raise ValueError(f"ranker {self.family}: ONNX scores differ from torch's by {error:.2e}")
        return error


def listwise_loss(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of each (padded) group's scores against its labels, mean over groups."""
    logp = torch.log_softmax(scores.masked_fill(~mask, -torch.inf), dim=1)
    per_group = -(labels * logp.masked_fill(~mask, 0.0)).sum(dim=1) / labels.sum(dim=1)
    return per_group.mean()


def train(groups: Groups, params: RankerParams, n_items: int, seed: int, threads: int) -> DeepModel:
    """One model of `params.family` on every group with a positive."""
    if groups.items is None:
        raise ValueError("a deep ranker needs the candidates' item rows")
    bounds = np.cumsum([0, *groups.lengths])
    useful = [g for g in range(len(groups.lengths)) if groups.labels[bounds[g] : bounds[g + 1]].sum() > 0]
    if len(useful) < 2:
        raise ValueError(
            f"only {len(useful)} user(s) have a held-out item among their candidates: too few to train the ranker"
        )
    features = groups.features
    width = features.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: mean 0, std 1 below
        mean = np.nan_to_num(np.nanmean(features, axis=0))
        std = np.nan_to_num(np.nanstd(features, axis=0))
    std = np.where(std > 1e-6, std, 1.0)
    with torch_threads(threads):
        torch.manual_seed(seed)
        inputs = Inputs(
            torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32)), n_items
        )
        module = FAMILIES[params.family](inputs, width, n_items, params)
        optimiser = torch.optim.Adam(module.parameters(), lr=params.deep_learning_rate, weight_decay=1e-6)
        rng = np.random.default_rng(seed)
        x_all = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        y_all = torch.from_numpy(groups.labels.astype(np.float32))
        i_all = torch.from_numpy(groups.items)
        longest = max(groups.lengths[g] for g in useful)
        for epoch in range(params.deep_epochs):
            module.train()
            order = rng.permutation(np.array(useful))
            total = 0.0
            for start in range(0, order.size, params.deep_groups_per_batch):
                batch = order[start : start + params.deep_groups_per_batch]
                rows = np.concatenate([np.arange(bounds[g], bounds[g + 1]) for g in batch])
                # each group's rows in a (groups, longest) grid; the padding is masked out of the softmax
                slot = np.concatenate([np.arange(groups.lengths[g]) for g in batch])
                owner = np.repeat(np.arange(batch.size), [groups.lengths[g] for g in batch])
                index = torch.from_numpy(owner * longest + slot)
                scores = module(x_all[rows], i_all[rows])
                grid = (
                    torch.full((batch.size * longest,), 0.0).index_put((index,), scores).reshape(-1, longest)
                )
                labels = (
                    torch.zeros(batch.size * longest).index_put((index,), y_all[rows]).reshape(-1, longest)
                )
                mask = (
                    torch.zeros(batch.size * longest, dtype=torch.bool)
                    .index_put((index,), torch.ones(rows.size, dtype=torch.bool))
                    .reshape(-1, longest)
                )
                loss = listwise_loss(grid, labels, mask)
                optimiser.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                total += loss.item() * batch.size
            log.info(
                "deep ranker epoch",
                extra={"family": params.family, "epoch": epoch, "loss": total / order.size},
            )
    return DeepModel(module, params.family, width)
