"""Helpers shared by the ONNX tests."""

from __future__ import annotations

import onnx


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node of a graph and of its subgraphs (`If` branches)."""
    out = []
    for n in graph.node:
        out.append(n)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += all_nodes(a.g)
    return out
