"""Scoring with a deep ranker family (DCN-v2, DeepFM) exported as ONNX by the trainer
(services.trainer.deep_ranker), with onnxruntime: the ranking service never imports torch.

The graph takes `features` (rows, the manifest's ranker features, float32) and `items` (rows, the
candidates' item rows, int64, -1 unknown) and returns `scores` (rows). A model whose inputs differ from
that (another feature count, other names or types) is refused at load, naming the difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.common.artifacts import ArtifactError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Rows = npt.NDArray[np.int64]

#: Deep families a version's manifest may name (ranker.family); lightgbm is the trees' path.
FAMILIES = ("dcnv2", "deepfm")


class OnnxScorer:
    kind = "onnx"

    def __init__(self, path: Path, width: int, threads: int, what: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # one request is scored at a time on the calling thread: a small fixed team, not every core
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise ArtifactError(f"{what}: {path.name} is not an ONNX model onnxruntime can run ({e})") from e
        inputs = {i.name: i for i in self.session.get_inputs()}
        expected = {"features": ("tensor(float)", width), "items": ("tensor(int64)", None)}
        if set(inputs) != set(expected):
            raise ArtifactError(
                f"{what}: {path.name} takes inputs {sorted(inputs)}, expected {sorted(expected)}"
            )
        for name, (dtype, columns) in expected.items():
            shape = list(inputs[name].shape)
            if inputs[name].type != dtype:
                raise ArtifactError(
                    f"{what}: {path.name} input {name} is {inputs[name].type}, expected {dtype}"
                )
            if columns is not None and (len(shape) != 2 or shape[1] != columns):
                raise ArtifactError(
                    f"{what}: {path.name} input {name} has shape {shape}: {shape[1] if len(shape) == 2 else '?'} "
                    f"features, the manifest lists {columns}"
                )
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs != ["scores"]:
            raise ArtifactError(f"{what}: {path.name} returns {outputs}, expected ['scores']")

    def predict(self, matrix: F32, items: Rows | None = None) -> F64:
        rows = items if items is not None else np.full(matrix.shape[0], -1, dtype=np.int64)
        (scores,) = self.session.run(
            ["scores"],
            {"features": np.ascontiguousarray(matrix, dtype=np.float32), "items": rows.astype(np.int64)},
        )
        return np.asarray(scores, dtype=np.float64)

    def contributions(self, matrix: F32) -> F64:
        raise NotImplementedError("per-feature contributions are computed for tree rankers only")
