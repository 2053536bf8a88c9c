"""A small ONNX graph builder that streams initializers to one external-data file.

Why not `onnx.save(..., save_as_external_data=True)`: that needs every weight in memory at once. Here each
initializer's bytes are appended to `<model>.onnx.data` the moment it is created (64-byte aligned, as ORT
prefers for mmap), and the ModelProto only holds the offsets, so peak memory is one tensor, not the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INLINE_LIMIT = 1024  # bytes; smaller tensors stay inside the .onnx file
ALIGN = 64

_NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int8): TensorProto.INT8,
}


class GraphBuilder:
    """Collects nodes, inputs, outputs and initializers; writes large initializers straight to disk."""

    def __init__(self, data_file: BinaryIO | None, data_name: str) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._data = data_file
        self._data_name = data_name
        self._offset = 0
        self._names: set[str] = set()
        self._counter = 0

    # ---- values ----
    def fresh(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}_{self._counter}"

    def initializer(self, name: str, array: np.ndarray) -> str:
        """Add a constant tensor (written to the external file when large); returns its name."""
        if name in self._names:
            return name
        array = np.ascontiguousarray(array)
        if array.dtype not in _NP_TO_ONNX:
            raise TypeError(f"unsupported initializer dtype {array.dtype}")
        self._names.add(name)
        if self._data is None or array.nbytes <= INLINE_LIMIT:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        pad = (-self._offset) % ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            self._offset += pad
        self._data.write(array.reshape(-1).view(np.uint8).data)  # no copy
        t = TensorProto(name=name, data_type=_NP_TO_ONNX[array.dtype], dims=list(array.shape))
        t.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self._data_name),
            ("offset", str(self._offset)),
            ("length", str(array.nbytes)),
        ):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        self._offset += array.nbytes
        self.initializers.append(t)
        return name

    def alias(self, name: str, new_name: str, shape: Sequence[int]) -> str:
        """A second initializer over the same bytes with another shape (external data is not duplicated)."""
        src = next(t for t in self.initializers if t.name == name)
        t = TensorProto()
        t.CopyFrom(src)
        t.name = new_name
        del t.dims[:]
        t.dims.extend(int(d) for d in shape)
        self.initializers.append(t)
        self._names.add(new_name)
        return new_name

    def const(self, values: Any, dtype: Any = np.int64, name: str | None = None) -> str:
        return self.initializer(name or self.fresh("const"), np.asarray(values, dtype=dtype))

    def has(self, name: str) -> bool:
        return name in self._names

    # ---- nodes ----
    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        n_out: int = 1,
        domain: str = "",
        name: str | None = None,
        outputs: Sequence[str] | None = None,
        **attrs: Any,
    ) -> Any:
        """Append a node; returns its output name (or a list when n_out > 1)."""
        base = name or self.fresh(op_type)
        outs = list(outputs) if outputs is not None else [f"{base}/out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=base, domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    @contextlib.contextmanager
    def branch(self) -> Iterator[list[onnx.NodeProto]]:
        """Collect the nodes emitted inside into a list of their own (an `If` branch body); constants still go
        to the main graph, which a branch reads from its enclosing scope."""
        outer, self.nodes = self.nodes, []
        try:
            yield self.nodes
        finally:
            self.nodes = outer

    def add_input(self, name: str, elem_type: int, shape: Sequence[Any]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_output(self, name: str, elem_type: int, shape: Sequence[Any]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def model(
        self,
        opsets: dict[str, int],
        functions: Sequence[onnx.FunctionProto] = (),
        ir_version: int = 10,
        name: str = "edgecpm",
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
            functions=list(functions),
            ir_version=ir_version,
            producer_name="edgecpm",
        )
        return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Serialize the graph (the weights are already in the external file)."""
    path.write_bytes(model.SerializeToString())
