"""Build an ONNX graph of a sentence-transformers BERT encoder straight from its safetensors.

Why build it by hand instead of ``torch.onnx.export`` or optimum: an export needs torch, and
the point of the ONNX backend is a service (and an install) without torch's 754 MB. A BERT
encoder is a short, fixed recipe (embeddings, N x [self-attention, feed-forward], layer norms),
so the graph is a few dozen standard ONNX ops made with onnx's helper API from the packaged
weights, in well under a second; nothing is downloaded.

``python -m embedshare.embedders.bert_graph FOLDER OUT.onnx [--int8]`` writes it: the service
runs that in a child process, so that neither onnx (16 MB PSS) nor the build's transient
copies of the weights (and ORT's hold on a model given as bytes) stay in the service.
ONNX Runtime's own optimiser then fuses the layer norms, GELUs and attention as it does for an
exported graph. ``tests/test_onnx_embedder.py`` proves the vectors equal to the torch path's.

The graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch, seq]``) and returns the
mask-aware mean of the last hidden states (``[batch, hidden]``), i.e. sentence-transformers'
Transformer + mean Pooling modules; the caller L2-normalises (the Normalize module).
Token type ids are always 0 for single texts, so type embedding 0 is folded into the position
table.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # onnx is imported by the build, in its own process (see the module doc)
    from onnx import ModelProto, NodeProto, TensorProto

OPSET = 17  # LayerNormalization is a standard op from 17 on
_MIN_FLOAT = float(np.finfo(np.float32).min)  # what transformers adds for a masked position


class UnsupportedModelError(ValueError):
    """The model folder is not a BERT encoder with mean pooling that this builder knows."""


@dataclass(frozen=True)
class BertShape:
    """The numbers of config.json that shape the graph."""

    layers: int
    hidden: int
    heads: int
    eps: float
    max_positions: int

    @classmethod
    def from_folder(cls, folder: Path) -> BertShape:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") != "bert" or config.get("hidden_act", "gelu") != "gelu":
            raise UnsupportedModelError(
                f"{folder}: only BERT encoders with exact GELU are supported by the ONNX builder, "
                f"got model_type={config.get('model_type')!r} hidden_act={config.get('hidden_act')!r}"
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise UnsupportedModelError(f"{folder}: only absolute position embeddings are supported")
        return cls(
            layers=int(config["num_hidden_layers"]),
            hidden=int(config["hidden_size"]),
            heads=int(config["num_attention_heads"]),
            eps=float(config.get("layer_norm_eps", 1e-12)),
            max_positions=int(config["max_position_embeddings"]),
        )


def check_mean_pooling(folder: Path) -> None:
    """Refuse a model whose sentence-transformers pooling is not the mean the graph computes."""
    pooling = folder / "1_Pooling" / "config.json"
    if not pooling.exists():
        raise UnsupportedModelError(f"{folder}: no 1_Pooling/config.json (not a sentence-transformers folder)")
    config = json.loads(pooling.read_text(encoding="utf-8"))
    modes = [k for k, v in config.items() if k.startswith("pooling_mode_") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        raise UnsupportedModelError(f"{folder}: pooling {modes} is not plain mean pooling")


class _GraphBuilder:
    """Accumulates nodes and initializers; one name counter for unique intermediate names."""

    def __init__(self) -> None:
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0
        self._names: set[str] = set()

    def weight(self, name: str, array: np.ndarray) -> str:
        """An initializer; a name already given is reused (constants shared by several nodes)."""
        from onnx import numpy_helper

        if name not in self._names:
            self._names.add(name)
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def linear(self, x: str, weights: dict[str, np.ndarray], prefix: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out]
        w = self.weight(f"{prefix}.weight_t", weights[f"{prefix}.weight"].T)
        b = self.weight(f"{prefix}.bias", weights[f"{prefix}.bias"])
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def layer_norm(self, x: str, weights: dict[str, np.ndarray], prefix: str, eps: float) -> str:
        scale = self.weight(f"{prefix}.weight", weights[f"{prefix}.weight"])
        bias = self.weight(f"{prefix}.bias", weights[f"{prefix}.bias"])
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)


def build_bert_mean_pooling(weights: dict[str, np.ndarray], shape: BertShape) -> ModelProto:
    """The ``onnx.ModelProto`` of encoder + mean pooling for these weights (see the module doc)."""
    from onnx import TensorProto, helper

    g = _GraphBuilder()
    head_dim = shape.hidden // shape.heads
    const = lambda name, value, dtype=np.int64: g.weight(name, np.asarray(value, dtype=dtype))  # noqa: E731

    # embeddings: word + position (+ type 0, folded in) -> LayerNorm
    word = g.weight("word_embeddings", weights["embeddings.word_embeddings.weight"])
    positions = g.weight(
        "position_and_type0_embeddings",
        weights["embeddings.position_embeddings.weight"] + weights["embeddings.token_type_embeddings.weight"][0],
    )
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), const("one_index", [1])], axis=0)
    pos = g.op("Slice", [positions, const("zero_index", [0]), seq_len, const("zero_index", [0])])
    x = g.op("Add", [g.op("Gather", [word, "input_ids"], axis=0), pos])
    x = g.layer_norm(x, weights, "embeddings.LayerNorm", shape.eps)

    # additive attention bias [B, 1, 1, S]: 0 where attended, float32 min where padded
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    masked = g.op("Sub", [const("one_float", 1.0, np.float32), mask])
    bias = g.op(
        "Unsqueeze", [g.op("Mul", [masked, const("min_float", _MIN_FLOAT, np.float32)]), const("bias_axes", [1, 2])]
    )
    heads_shape = const("heads_shape", [0, 0, shape.heads, head_dim])
    hidden_shape = const("hidden_shape", [0, 0, shape.hidden])
    scale = const("attention_scale", 1.0 / math.sqrt(head_dim), np.float32)
    sqrt2 = const("sqrt2", math.sqrt(2.0), np.float32)
    half = const("half", 0.5, np.float32)

    for i in range(shape.layers):
        p = f"encoder.layer.{i}"
        q = g.op(
            "Transpose",
            [g.op("Reshape", [g.linear(x, weights, f"{p}.attention.self.query"), heads_shape])],
            perm=[0, 2, 1, 3],
        )
        k = g.op(
            "Transpose",
            [g.op("Reshape", [g.linear(x, weights, f"{p}.attention.self.key"), heads_shape])],
            perm=[0, 2, 3, 1],
        )
        v = g.op(
            "Transpose",
            [g.op("Reshape", [g.linear(x, weights, f"{p}.attention.self.value"), heads_shape])],
            perm=[0, 2, 1, 3],
        )
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), hidden_shape])
        attended = g.linear(context, weights, f"{p}.attention.output.dense")
        x = g.layer_norm(g.op("Add", [attended, x]), weights, f"{p}.attention.output.LayerNorm", shape.eps)
        inner = g.linear(x, weights, f"{p}.intermediate.dense")
        gelu = g.op(
            "Mul",
            [
                g.op("Mul", [inner, half]),
                g.op("Add", [g.op("Erf", [g.op("Div", [inner, sqrt2])]), const(f"one_{i}", 1.0, np.float32)]),
            ],
        )
        out = g.linear(gelu, weights, f"{p}.output.dense")
        x = g.layer_norm(g.op("Add", [out, x]), weights, f"{p}.output.LayerNorm", shape.eps)

    # mean pooling over attended tokens, as sentence-transformers' Pooling (clamped at 1e-9)
    mask3 = g.op("Unsqueeze", [mask, const("pool_axis", [2])])
    axis1 = const("sum_axis", [1])
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3]), axis1], keepdims=0)
    counts = g.op("Clip", [g.op("ReduceSum", [mask3, axis1], keepdims=0), const("min_count", 1e-9, np.float32)])
    g.nodes.append(helper.make_node("Div", [summed, counts], ["mean_pooled"], name="mean_pooled"))

    graph = helper.make_graph(
        g.nodes,
        "bert_mean_pooling",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("mean_pooled", TensorProto.FLOAT, ["batch", shape.hidden])],
        initializer=g.initializers,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="embedshare.bert_graph", ir_version=8
    )


def build_from_folder(folder: Path) -> ModelProto:
    """Read ``model.safetensors`` and config from a sentence-transformers folder; build the graph."""
    from safetensors.numpy import load_file

    shape = BertShape.from_folder(folder)
    check_mean_pooling(folder)
    weights = load_file(str(folder / "model.safetensors"))
    return build_bert_mean_pooling(weights, shape)


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantisation (weights int8, activations per call).

    Per-channel weight scales: per-tensor ones gave a cosine to the fp32 vectors as low as 0.85
    on long texts, per-channel 0.97 at worst and 0.992 on average (60 varied texts).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its "consider pre-processing" advice, on the root logger
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


def main(argv: list[str]) -> int:
    """Write the graph of a model folder to a file (the int8 one with ``--int8``)."""
    import onnx

    if len(argv) not in (2, 3) or (len(argv) == 3 and argv[2] != "--int8"):
        print("usage: python -m embedshare.embedders.bert_graph FOLDER OUT.onnx [--int8]", file=sys.stderr)
        return 2
    folder, out = Path(argv[0]), Path(argv[1])
    try:
        model = build_from_folder(folder)
    except (UnsupportedModelError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if len(argv) == 3:
        fp32 = out.with_name(out.name + ".fp32")
        onnx.save_model(model, str(fp32))
        quantize_int8(fp32, out)
        fp32.unlink()
    else:
        onnx.save_model(model, str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
