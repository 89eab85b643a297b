"""A NetworkPolicy evaluator (networking.k8s.io/v1 semantics) over rendered policies and pod labels.

A connection src -> dst:port is allowed when src's egress admits it and dst's ingress admits it; a
direction is unrestricted for a pod no policy of that type selects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.helm.chart import NAMESPACE

Obj = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    #: port name -> (number, protocol)
    ports: dict[str, tuple[int, str]] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """LabelSelector semantics: an empty selector selects everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _policy_types(policy: Obj) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]


def _peer_matches(peer: Obj, other: Pod, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        # Pod traffic is matched by pod/namespace selectors; an ipBlock here stands for "outside the cluster".
        return other.namespace == "<external>"
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    if ns_sel is None:
        in_namespace = other.namespace == policy_namespace
    else:
        in_namespace = selects(ns_sel, other.namespace_labels)
    return in_namespace and (pod_sel is None or selects(pod_sel, other.labels))


def _port_matches(ports: list[Obj] | None, dst: Pod, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        wanted = p["port"]
        if isinstance(wanted, str):
            named = dst.ports.get(wanted)
            if named is not None and named == (port, protocol):
                return True
            continue
        if int(wanted) <= port <= int(p.get("endPort") or wanted):
            return True
    return False


def _direction_allowed(
    policies: list[Obj], subject: Pod, other: Pod, dst: Pod, port: int, protocol: str, kind: str
) -> bool:
    relevant = [
        p
        for p in policies
        if p["metadata"].get("namespace", NAMESPACE) == subject.namespace
        and selects(p["spec"].get("podSelector"), subject.labels)
        and kind in _policy_types(p)
    ]
    if not relevant:
        return True
    peers_key = "from" if kind == "Ingress" else "to"
    for policy in relevant:
        for rule in policy["spec"].get(kind.lower()) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(peer, other, subject.namespace) for peer in peers)
            if peer_ok and _port_matches(rule.get("ports"), dst, port, protocol):
                return True
    return False


def allowed(policies: list[Obj], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    egress = _direction_allowed(policies, src, dst, dst, port, protocol, "Egress")
    ingress = _direction_allowed(policies, dst, src, dst, port, protocol, "Ingress")
    return egress and ingress
