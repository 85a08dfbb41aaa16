"""Planning: cycle detection and topological order (networkx), pruning, and Merkle signatures.

A node's signature hashes its class name and version, its constants, its fingerprint (if the class
has one) and, for each linked input, the signature and output index of its source. Node ids are
not part of it, so identical subgraphs share cache entries, and any change upstream changes every
signature below it. Signatures are computed in topological order, never by recursion, so chains of
any length are fine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import blake2b

import networkx as nx

from nodegraph.engine.validate import CompiledNode
from nodegraph.errors import ValidationIssue


@dataclass(slots=True)
class Plan:
    """What a run executes: the needed nodes in topological order and the requested output nodes."""

    order: list[str]
    nodes: dict[str, CompiledNode]
    outputs: list[str]
    fingerprinted: list[str]  # nodes whose class adds a fingerprint (recomputed every run)
    static_signatures: dict[str, str] | None  # precomputed when no node is fingerprinted


def build_plan(
    compiled: dict[str, CompiledNode], requested: list[str] | None = None
) -> tuple[Plan | None, list[ValidationIssue]]:
    """Order the nodes the requested outputs (default: every output node) depend on."""
    graph = nx.DiGraph()
    graph.add_nodes_from(compiled)
    graph.add_edges_from(
        (source, node_id)
        for node_id, node in compiled.items()
        for source, _, _ in node.links.values()
        if source in compiled
    )
    try:
        order = list(nx.topological_sort(graph))
    except nx.NetworkXUnfeasible:
        return None, _cycle_issues(graph)
    issues: list[ValidationIssue] = []
    if requested is None:
        outputs = [node_id for node_id in order if compiled[node_id].spec.output_node]
        if not outputs:
            issues.append(
                ValidationIssue(
                    type="no_output_node",
                    message="the workflow has no output node (such as Preview or SaveImage), so nothing would run",
                )
            )
    else:
        outputs = []
        for node_id in requested:
            node = compiled.get(node_id)
            if node is None or not node.spec.output_node:
                issues.append(
                    ValidationIssue(
                        node=node_id,
                        type="unknown_output",
                        message=f"requested output {node_id!r} is not an output node of this workflow",
                    )
                )
            elif node_id not in outputs:
                outputs.append(node_id)
    if issues:
        return None, issues
    needed = _ancestors_and_self(compiled, outputs)
    order = [node_id for node_id in order if node_id in needed]
    fingerprinted = [node_id for node_id in order if compiled[node_id].spec.has_fingerprint]
    plan = Plan(order=order, nodes=compiled, outputs=outputs, fingerprinted=fingerprinted, static_signatures=None)
    if not fingerprinted:
        plan.static_signatures = signatures(plan, {})
    return plan, []


def _ancestors_and_self(compiled: dict[str, CompiledNode], outputs: list[str]) -> set[str]:
    needed: set[str] = set()
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in needed:
            continue
        needed.add(node_id)
        stack.extend(source for source, _, _ in compiled[node_id].links.values())
    return needed


def _cycle_issues(graph: nx.DiGraph) -> list[ValidationIssue]:
    issues = []
    for component in nx.strongly_connected_components(graph):
        if len(component) == 1:
            (node_id,) = component
            if graph.has_edge(node_id, node_id):
                issues.append(ValidationIssue(node=node_id, type="cycle", message=f"node {node_id!r} links to itself"))
            continue
        members = sorted(component)
        path = [edge[0] for edge in nx.find_cycle(graph.subgraph(component))]
        issues.append(
            ValidationIssue(
                node=members[0],
                type="cycle",
                message=f"nodes {_some(members, ', ')} form a cycle ({_some([*path, path[0]], ' -> ')}); "
                "a workflow must be acyclic",
            )
        )
    return issues


def _some(node_ids: list[str], separator: str, limit: int = 12) -> str:
    """Node ids for a message; a cycle through thousands of nodes should not become a megabyte."""
    shown = separator.join(repr(node_id) for node_id in node_ids[:limit])
    return shown if len(node_ids) <= limit else f"{shown}{separator}... ({len(node_ids) - limit} more)"


def signatures(plan: Plan, fingerprints: Mapping[str, str]) -> dict[str, str]:
    """The Merkle signature of every planned node, in one pass over the topological order."""
    result: dict[str, str] = {}
    nodes = plan.nodes
    for node_id in plan.order:
        node = nodes[node_id]
        spec = node.spec
        key = (
            spec.name,
            spec.version,
            tuple(node.constants.items()),
            tuple((name, result[source], index) for name, (source, index, _) in node.links.items()),
            fingerprints.get(node_id),
        )
        result[node_id] = blake2b(repr(key).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return result
