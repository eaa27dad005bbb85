"""Where a cluster runs: image recipe, docker / ssh / local-process backends, the Node transport.

`create_cluster(spec)` returns the backend's Cluster; see clusters/base.py for the contract.
"""
from __future__ import annotations

from clusters.base import Cluster, ClusterError, ClusterSpec, CommandResult, Node

BACKENDS = ("docker", "ssh", "local")


def create_cluster(spec: ClusterSpec, name: str | None = None) -> Cluster:
    """The Cluster of spec.backend (not started: call start(), and teardown() in a finally)."""
    if spec.backend == "local":
        from clusters.local import LocalCluster
        return LocalCluster(spec, name=name)
    if spec.backend == "docker":
        from clusters.docker import DockerCluster
        return DockerCluster(spec, name=name)
    if spec.backend == "ssh":
        from clusters.ssh import SSHCluster
        return SSHCluster(spec, name=name)
    raise ClusterError(f"unknown cluster backend {spec.backend!r}; use one of {', '.join(BACKENDS)}")


__all__ = ["Cluster", "ClusterError", "ClusterSpec", "CommandResult", "Node", "create_cluster", "BACKENDS"]
