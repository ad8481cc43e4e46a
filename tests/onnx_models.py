"""A stand-in for an exported imagesim model, built with onnx.helper: tests of encode and what reads its
outputs run without torch."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_onnx(path: Path, size: int = 32) -> Path:
    """A stand-in exported model: embedding = unit(mean RGB / 255 + 0.1), logits = mean RGB · W."""
    from onnx import TensorProto, helper, save

    const = helper.make_tensor
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2], keepdims=0),
            helper.make_node("Div", ["mean", "scale"], ["rgb"]),
            helper.make_node("Add", ["rgb", "bias"], ["raw"]),
            helper.make_node("LpNormalization", ["raw"], ["embedding"], axis=1, p=2),
            helper.make_node("MatMul", ["rgb", "weights"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
        ],
        [
            const("scale", TensorProto.FLOAT, [], [255.0]),
            const("bias", TensorProto.FLOAT, [3], [0.1, 0.1, 0.1]),
            const("weights", TensorProto.FLOAT, [3, 2], [4.0, -4.0, 4.0, 0.0, 4.0, 4.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"classes": json.dumps(["bright", "blue"]), "thresholds": json.dumps([0.9, 0.5]), "chip_size": str(size), "embedding_dim": "3"}
    helper.set_model_props(model, {f"imagesim.{k}": v for k, v in meta.items()})
    save(model, str(path))
    return path
