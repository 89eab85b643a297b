"""The chart with tls.enabled, in the image: a gateway pod of that render mounts its certificate (the key
readable by the pod's group only), passes its exec probes (services.healthcheck over TLS, in the
container), answers a TLS client on the host that trusts the rendered CA, and refuses plaintext. One pod
and no backends: the hops between services are the integration tier's (tests/integration/test_tls.py) and
the rendered certificates' (tests/helm/test_tls.py)."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
from grpc_health.v1 import health_pb2

from services.common.tls import ClientTLS
from services.healthcheck import health_status
from tests.containers.conftest import GATEWAY_PORT, tier_values
from tests.containers.pods import Node
from tests.helm.chart import NAMESPACE, objects, render

pytestmark = pytest.mark.timeout(600)


def test_a_tls_gateway_pod_probes_over_tls_and_serves_only_tls(
    docker_client: docker.DockerClient, images: None, tmp_path: Path
) -> None:
    rendered = objects(render(tier_values(tls={"enabled": True})))
    (deployment,) = [
        o
        for o in rendered
        if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    ]
    node = Node(
        docker_client, rendered, namespace=NAMESPACE, cluster_domain="cluster.local", workdir=tmp_path
    )
    try:
        pod = node.start("gateway-tls", deployment["spec"]["template"], publish=[GATEWAY_PORT])
        node.wait_ready(pod)  # the startup and readiness probes: python -m services.healthcheck over TLS
        assert node.alive(pod)
        key = pod.container.exec_run(["stat", "-L", "-c", "%a %g", "/etc/recsys/tls/tls.key"])
        assert isinstance(key.output, bytes) and key.output.decode().split() == ["440", "10001"]  # group only
        (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
        ca_pem = node.secret_value(volume["secret"]["secretName"], "ca.crt")
        assert ca_pem is not None
        (tmp_path / "ca.crt").write_text(ca_pem)
        address = f"127.0.0.1:{pod.host_port(GATEWAY_PORT)}"
        tls = ClientTLS(tmp_path / "ca.crt", server_name=deployment["metadata"]["name"])
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health_status(address, "recsys.v1.Gateway", 10.0, tls) == serving
        assert health_status(address, "recsys.v1.Gateway", 2.0) == health_pb2.HealthCheckResponse.UNKNOWN
    finally:
        node.close()
