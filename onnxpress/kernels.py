"""Which nodes an execution provider has no kernel for, read from ONNX Runtime's kernel registry.

Where a model really ran is read from a built session (``Runner.placement``); this module
explains a session that could not be built, by matching each node's op, domain, opset version
and input types against the kernels the installed build registers. Nodes ONNX Runtime never
needs a kernel for are not named: Constant nodes (turned into initializers) and ops whose
ONNX schema has a function body (inlined where no kernel exists, e.g. HardSwish).
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass

import onnx_ir as ir

from onnxpress import _proto

_DEFAULT_DOMAINS = ("", "ai.onnx")

# Providers that live in the core library: reading the registry loads no other shared library.
_BUILT_IN = frozenset({"CPUExecutionProvider", "AzureExecutionProvider"})


class RegistryUnavailable(RuntimeError):
    """ONNX Runtime's kernel registry could not be read (the process reading it died)."""


@dataclass(frozen=True)
class Unplaced:
    """A node the provider cannot run, and why."""

    node: str
    op_type: str
    domain: str
    reason: str

    def describe(self) -> str:
        op = self.op_type if self.domain in _DEFAULT_DOMAINS else f"{self.domain}::{self.op_type}"
        return f"{self.node} ({op}): {self.reason}"


def _domain(domain: str) -> str:
    return "" if domain in _DEFAULT_DOMAINS else domain


@functools.cache
def _schemas() -> dict[tuple[str, str], list[tuple[int, list[tuple[str, str]]]]]:
    from onnxruntime.capi import _pybind_state as C

    table: dict[tuple[str, str], list] = {}
    for schema in C.get_all_operator_schema():
        formals = [(f.typeStr, str(f.option)) for f in schema.inputs]
        table.setdefault((_domain(schema.domain), schema.name), []).append((schema.since_version, formals))
    for versions in table.values():
        versions.sort(key=lambda item: item[0])
    return table


_REGISTRY_SCRIPT = r"""
import json, sys
from onnxruntime.capi import _pybind_state as C
rows = [[k.domain, k.op_name, *k.version_range, {p: list(t) for p, t in k.type_constraints.items()}]
        for k in C.get_all_opkernel_def() if k.provider == sys.argv[1]]
json.dump(rows, sys.stdout)
"""


@functools.cache
def _kernels(provider: str) -> dict[tuple[str, str], list[tuple[int, int, dict[str, list[str]]]]]:
    """The kernels ``provider`` registers, by (domain, op).

    ``get_all_opkernel_def()`` loads every provider library the build has; in onnxruntime-gpu
    (seen with 1.30.0) it segfaults when one cannot be loaded, e.g. TensorRT's where TensorRT is
    not installed, which is the common case. So in a build with such providers the registry is
    read in a child process, and a crash there raises ``RegistryUnavailable`` instead.
    """
    import onnxruntime as ort

    if set(ort.get_available_providers()) <= _BUILT_IN:
        from onnxruntime.capi import _pybind_state as C

        rows = [[k.domain, k.op_name, *k.version_range, dict(k.type_constraints)]
                for k in C.get_all_opkernel_def() if k.provider == provider]
    else:
        try:
            result = subprocess.run([sys.executable, "-c", _REGISTRY_SCRIPT, provider],
                                    capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RegistryUnavailable(f"reading ONNX Runtime's kernel registry failed: {err}") from None
        if result.returncode != 0:
            raise RegistryUnavailable(f"reading ONNX Runtime's kernel registry crashed (exit code "
                                      f"{result.returncode})")
        rows = json.loads(result.stdout)
    table: dict[tuple[str, str], list] = {}
    for domain, op_name, start, end, constraints in rows:
        table.setdefault((_domain(domain), op_name), []).append((start, end, constraints))
    return table


def _type_string(value: ir.Value | None) -> str | None:
    if value is None or value.type is None or not isinstance(value.type, ir.TensorType):
        return None
    return f"tensor({value.dtype.name.lower()})"


def unplaced_nodes(model: ir.Model, provider: str) -> list[Unplaced]:
    """Nodes of ``model`` (subgraphs included) with no ``provider`` kernel for their op and types.

    Raises ``RegistryUnavailable`` when ONNX Runtime's kernel registry cannot be read.
    Calls of the model's own functions are not checked themselves (ONNX Runtime inlines them);
    their bodies are.
    """
    local = {(f.domain, f.name) for f in model.functions.values()}
    graphs = [model.graph] + [f.graph for f in model.functions.values()]
    found = []
    seen = set()
    for graph in graphs:
        for node in graph.all_nodes():
            if id(node) in seen or (node.domain, node.op_type) in local:
                continue
            seen.add(id(node))
            reason = _why_unplaced(model, node, provider)
            if reason:
                found.append(Unplaced(node.name or f"<unnamed {node.op_type}>", node.op_type, node.domain, reason))
    return found


def _why_unplaced(model: ir.Model, node: ir.Node, provider: str) -> str | None:
    domain = _domain(node.domain)
    opset = model.opset_imports.get(node.domain, model.opset_imports.get(domain))
    if opset is None and domain == "":
        opset = model.opset_imports.get("ai.onnx")
    versions = _schemas().get((domain, node.op_type))
    if not versions:
        return "ONNX Runtime knows no such operator"
    if opset is None:
        return f"the model imports no opset for domain '{node.domain}'"
    applicable = [v for v in versions if v[0] <= opset]
    if not applicable:
        return f"operator does not exist at opset {opset}"
    since, formals = applicable[-1]
    kernels = [k for k in _kernels(provider).get((domain, node.op_type), []) if k[0] <= since <= k[1]]
    if not kernels and (node.op_type == "Constant" or _proto.defines_function(node.op_type, domain, opset)):
        return None  # a Constant becomes an initializer; a function op runs as its body
    if not kernels:
        return f"no {provider} kernel for opset {since}"
    bound = _bind_types(node, formals)
    for _, _, constraints in kernels:
        if all(param not in constraints or types <= set(constraints[param]) for param, types in bound.items()):
            return None
    wanted = ", ".join(f"{p}={sorted(t)}" for p, t in sorted(bound.items()))
    return f"no {provider} kernel for input types {wanted}"


def _bind_types(node: ir.Node, formals: list[tuple[str, str]]) -> dict[str, set[str]]:
    """Type parameter -> the input types bound to it (inputs of unknown type are skipped)."""
    bound: dict[str, set[str]] = {}
    for index, value in enumerate(node.inputs):
        if not formals:
            break
        formal = formals[min(index, len(formals) - 1)]
        if index >= len(formals) and "Variadic" not in formal[1]:
            break
        type_string = _type_string(value)
        if type_string is not None:
            bound.setdefault(formal[0], set()).add(type_string)
    return bound
