"""Build an ONNX graph of a sentence-transformers BERT encoder straight from its safetensors.

Why build it by hand instead of ``torch.onnx.export`` or optimum: an export needs torch, and
the point of the ONNX backend is a service (and an install) without torch's 754 MB. A BERT
encoder is a short, fixed recipe (embeddings, N x [self-attention, feed-forward], layer norms),
so the graph is about 50 ops made with onnx's helper API from the packaged weights, in well
under a second; nothing is downloaded. The ops are ONNX Runtime's fused ones (``com.microsoft``
Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization), the form its
``onnxruntime.transformers`` optimizer gives an exported BERT; ``tests/embedders/test_onnx_graph.py``
checks the census.

``python -m embedshare.embedders.bert_graph FOLDER OUT.onnx [--int8]`` writes it: the service
runs that in a child process, so that neither onnx (16 MB PSS) nor the build's transient
copies of the weights (and ORT's hold on a model given as bytes) stay in the service.
``tests/embedders/test_onnx_embedder.py`` proves the vectors equal to the torch path's.

The graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch, seq]``) and returns the
mask-aware mean of the last hidden states (``[batch, hidden]``), i.e. sentence-transformers'
Transformer + mean Pooling modules; the caller L2-normalises (the Normalize module). The fp32
graph also takes the word-embedding table as its input ``word_embeddings``, so the service
holds only the rows its texts use (``word_rows``); the int8 graph keeps it as an initializer,
quantised.
Token type ids are always 0 for single texts, so type embedding 0 is folded into the position
table. Attention masks padded positions with -10000 (the op's default) where transformers adds
float32's minimum: either way their softmax weight is exactly 0 in float32.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UnsupportedModelError

if TYPE_CHECKING:  # onnx is imported by the build, in its own process (see the module doc)
    from onnx import ModelProto, NodeProto, TensorProto

OPSET = 17
CONTRIB_DOMAIN = "com.microsoft"  # ONNX Runtime's own (fused) ops
# The graph's form: part of the name of the file kept in the store, so a graph of an older form
# is never loaded after an upgrade (the vectors, hence the model_id, stay the same).
GRAPH_FORM = "fused-2"  # 2: fp32 takes word_embeddings as an input (word_rows.py)


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

    def op(self, op_type: str, inputs: list[str], extra_outputs: int = 0, **attrs: Any) -> str:
        """A node; its first output's name (``extra_outputs`` more, unused, if the op needs them)."""
        from onnx import helper

        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        outputs = [out] + [f"{out}_unused_{n}" for n in range(extra_outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=out, **attrs))
        return out

    def matmul(self, x: str, weights: dict[str, np.ndarray], prefix: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out]
        return self.op("MatMul", [x, self.weight(f"{prefix}.weight_t", weights[f"{prefix}.weight"].T)])

    def bias(self, weights: dict[str, np.ndarray], prefix: str) -> str:
        return self.weight(f"{prefix}.bias", weights[f"{prefix}.bias"])

    def skip_layer_norm(self, x: str, skip: str, weights: dict[str, np.ndarray], prefix: str, eps: float) -> str:
        """LayerNorm(x @ W + b + skip): the dense layer's bias and the residual fused in."""
        return self.op(
            "SkipLayerNormalization",
            [
                self.matmul(x, weights, f"{prefix}.dense"),
                skip,
                self.weight(f"{prefix}.LayerNorm.weight", weights[f"{prefix}.LayerNorm.weight"]),
                self.weight(f"{prefix}.LayerNorm.bias", weights[f"{prefix}.LayerNorm.bias"]),
                self.bias(weights, f"{prefix}.dense"),
            ],
            epsilon=eps,
            domain=CONTRIB_DOMAIN,
        )


def build_bert_mean_pooling(
    weights: dict[str, np.ndarray], shape: BertShape, word_embeddings_input: bool = False
) -> ModelProto:
    """The ``onnx.ModelProto`` of encoder + mean pooling for these weights (see the module doc).

    With ``word_embeddings_input`` the word-embedding table is the graph input
    ``word_embeddings`` (float ``[vocab, hidden]``) instead of an initializer: the fp32 service
    feeds it a table holding only the rows its texts used (``word_rows``). int8 keeps the
    initializer: ONNX Runtime's quantiser quantises EmbedLayerNormalization's table only then.

    Emitted in ONNX Runtime's fused form (its ``com.microsoft`` ops, as its transformer optimizer
    leaves an exported BERT): EmbedLayerNormalization, then per layer one Attention (Q, K and V
    packed in one MatMul, softmax inside), SkipLayerNormalization for each residual + LayerNorm,
    BiasGelu for the feed-forward. Unfused, the same model was 6 attention blocks of MatMul,
    Reshape, Transpose and Softmax that the session's optimizer did not fuse.
    """
    from onnx import TensorProto, helper

    g = _GraphBuilder()
    word_table = weights["embeddings.word_embeddings.weight"]
    const = lambda name, value, dtype=np.int64: g.weight(name, np.asarray(value, dtype=dtype))  # noqa: E731
    ms: dict[str, Any] = {"domain": CONTRIB_DOMAIN}

    # embeddings: word + position (+ type 0, folded in) -> LayerNorm, in one op
    ids32 = g.op("Cast", ["input_ids"], to=TensorProto.INT32)
    mask32 = g.op("Cast", ["attention_mask"], to=TensorProto.INT32)
    x = g.op(
        "EmbedLayerNormalization",
        [
            ids32,
            "",  # no segment ids: type embedding 0 is in the position table
            "word_embeddings" if word_embeddings_input else g.weight("word_embeddings", word_table),
            g.weight(
                "position_and_type0_embeddings",
                weights["embeddings.position_embeddings.weight"]
                + weights["embeddings.token_type_embeddings.weight"][0],
            ),
            "",
            g.weight("embeddings.LayerNorm.weight", weights["embeddings.LayerNorm.weight"]),
            g.weight("embeddings.LayerNorm.bias", weights["embeddings.LayerNorm.bias"]),
        ],
        extra_outputs=1,  # its mask index: Attention takes the 2-D mask instead
        epsilon=shape.eps,
        **ms,
    )
    for i in range(shape.layers):
        p = f"encoder.layer.{i}"
        parts = [f"{p}.attention.self.{name}" for name in ("query", "key", "value")]
        qkv_w = g.weight(f"{p}.qkv.weight_t", np.concatenate([weights[f"{n}.weight"].T for n in parts], axis=1))
        qkv_b = g.weight(f"{p}.qkv.bias", np.concatenate([weights[f"{n}.bias"] for n in parts]))
        context = g.op("Attention", [x, qkv_w, qkv_b, mask32], num_heads=shape.heads, **ms)
        x = g.skip_layer_norm(context, x, weights, f"{p}.attention.output", shape.eps)
        inner = g.op(
            "BiasGelu",
            [g.matmul(x, weights, f"{p}.intermediate.dense"), g.bias(weights, f"{p}.intermediate.dense")],
            **ms,
        )
        x = g.skip_layer_norm(inner, x, weights, f"{p}.output", shape.eps)

    # mean pooling over attended tokens, as sentence-transformers' Pooling (clamped at 1e-9)
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask3 = g.op("Unsqueeze", [mask, const("pool_axis", [2])])
    axis1 = const("sum_axis", [1])
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3]), axis1], keepdims=0)
    counts = g.op("Clip", [g.op("ReduceSum", [mask3, axis1], keepdims=0), const("min_count", 1e-9, np.float32)])
    g.nodes.append(helper.make_node("Div", [summed, counts], ["mean_pooled"], name="mean_pooled"))

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    if word_embeddings_input:
        inputs.append(helper.make_tensor_value_info("word_embeddings", TensorProto.FLOAT, list(word_table.shape)))
    graph = helper.make_graph(
        g.nodes,
        "bert_mean_pooling",
        inputs,
        [helper.make_tensor_value_info("mean_pooled", TensorProto.FLOAT, ["batch", shape.hidden])],
        initializer=g.initializers,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(CONTRIB_DOMAIN, 1)],
        producer_name="embedshare.bert_graph",
        producer_version=GRAPH_FORM,
        ir_version=8,
    )


def build_from_folder(folder: Path, word_embeddings_input: bool = False) -> ModelProto:
    """Read ``model.safetensors`` and config from a sentence-transformers folder; build the graph."""
    from safetensors.numpy import load_file

    shape = BertShape.from_folder(folder)
    check_mean_pooling(folder)
    weights = load_file(str(folder / "model.safetensors"))
    return build_bert_mean_pooling(weights, shape, word_embeddings_input)


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantisation (weights int8, activations per call).

    Per-channel weight scales: per-tensor ones gave a cosine to the fp32 vectors as low as 0.85
    on long texts, per-channel 0.97 at worst and 0.992 on average (60 varied texts).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its "consider pre-processing" advice, on the root logger
    from onnx import TensorProto

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # ONNX's shape inference gives no types for the com.microsoft ops' outputs: all are float
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )


def main(argv: list[str]) -> int:
    """Write the graph of a model folder to a file (the int8 one with ``--int8``)."""
    import onnx

    if len(argv) not in (2, 3) or (len(argv) == 3 and argv[2] != "--int8"):
        print("usage: python -m embedshare.embedders.bert_graph FOLDER OUT.onnx [--int8]", file=sys.stderr)
        return 2
    folder, out = Path(argv[0]), Path(argv[1])
    int8 = len(argv) == 3
    try:
        model = build_from_folder(folder, word_embeddings_input=not int8)
    except (UnsupportedModelError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if int8:
        fp32 = out.with_name(out.name + ".fp32")
        onnx.save_model(model, str(fp32))
        quantize_int8(fp32, out)
        fp32.unlink()
    else:
        onnx.save_model(model, str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
