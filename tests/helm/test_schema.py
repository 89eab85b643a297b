"""values.schema.json refuses bad values before anything is rendered, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chart import render

BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"components": {"gateway": {"replicas": -1}}}, "/components/gateway/replicas"),
    ({"componentz": {}}, "componentz"),
    ({"components": {"gateway": {"replica": 2}}}, "replica"),
    ({"image": {"tag": "latest"}}, "/image/tag"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"components": {"ranking": {"port": 70000}}}, "/components/ranking/port"),
    ({"components": {"features": {"config": {"redisUrl": "redis://x"}}}}, "redisUrl"),
    (
        {"components": {"gateway": {"config": {"rankingBudgetMs": 0}}}},
        "/components/gateway/config/rankingBudgetMs",
    ),
    (
        {"components": {"retrieval": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}}}}},
        "/components/retrieval/resources/requests/cpu",
    ),
    ({"components": {"retrieval": {"resources": {"limits": None}}}}, "limits"),
    (
        {"components": {"ranking": {"autoscaling": {"maxReplicas": 0}}}},
        "/components/ranking/autoscaling/maxReplicas",
    ),
    (
        {"components": {"features": {"config": {"eventsMaxLen": -1}}}},
        "/components/features/config/eventsMaxLen",
    ),
    ({"redis": {"auth": {"password": "p@ss/word"}}}, "/redis/auth/password"),
    ({"redis": {"external": {"url": "http://redis:6379"}}}, "/redis/external/url"),
    ({"redis": {"image": {"tag": "latest"}}}, "/redis/image/tag"),
    (
        {"artifacts": {"persistence": {"accessModes": ["ReadWriteSometimes"]}}},
        "/artifacts/persistence/accessModes",
    ),
    ({"logLevel": "loud"}, "/logLevel"),
    ({"experiments": [{"id": "x", "salt": "y", "arms": []}]}, "/experiments/0/arms"),
    ({"components": {"gateway": {"auth": {"enable": False}}}}, "enable"),
    ({"components": {"gateway": {"auth": {"enabled": "no"}}}}, "/components/gateway/auth/enabled"),
    (
        {
            "components": {
                "gateway": {"auth": {"keys": [{"name": "a", "sha256": "rsk_plain", "roles": ["recommend"]}]}}
            }
        },
        "/components/gateway/auth/keys/0/sha256",
    ),
    (
        {
            "components": {
                "gateway": {"auth": {"keys": [{"name": "a", "sha256": "a" * 64, "roles": ["root"]}]}}
            }
        },
        "/components/gateway/auth/keys/0/roles/0",
    ),
    (
        {"components": {"gateway": {"auth": {"keys": [{"name": "a", "sha256": "a" * 64, "roles": []}]}}}},
        "/components/gateway/auth/keys/0/roles",
    ),
    ({"components": {"gateway": {"auth": {"keys": [{"name": "a", "roles": ["recommend"]}]}}}}, "sha256"),
    ({"tls": {"enabled": "yes"}}, "/tls/enabled"),
    ({"tls": {"enable": True}}, "enable"),
    ({"tls": {"enabled": True, "gatewayIpAddresses": ["gateway.example.com"]}}, "/tls/gatewayIpAddresses/0"),
    ({"tls": {"enabled": True, "gatewayDnsNames": ["Not A Name"]}}, "/tls/gatewayDnsNames/0"),
    ({"tls": {"enabled": True, "validityDays": 0}}, "/tls/validityDays"),
    ({"tls": {"enabled": True, "certManager": {"duration": "90 days"}}}, "/tls/certManager/duration"),
    (
        {"tls": {"enabled": True, "certManager": {"enabled": True, "issuerRef": {"kind": "ClusterIssuer"}}}},
        "/tls/certManager/issuerRef",
    ),
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_field(values: dict[str, Any], field: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmValuesError) as raised:
        render(values)
    assert field in str(raised.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"redis": {"enabled": False}},
            "without Redis the features service keeps its online state in one process",
        ),
        (
            {
                "trainer": {"schedule": "@daily"},
                "redis": {"enabled": False},
                "components": {"features": {"replicas": 1, "autoscaling": {"enabled": False}}},
            },
            "trainer.schedule: the retraining CronJob trains from the event stream in Redis",
        ),
        (
            {
                "trainer": {"schedule": "@daily"},
                "redis": {
                    "enabled": False,
                    "external": {"url": "rediss://r:6380/0", "tls": {"existingSecret": "redis-tls"}},
                },
            },
            "trainer.schedule: the trainer cannot yet read a Redis that needs redis.external.tls",
        ),
        (
            {"components": {"gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}},
            "components.gateway.autoscaling: minReplicas (5) exceeds maxReplicas (3)",
        ),
        (
            {
                "components": {
                    "gateway": {
                        "auth": {
                            "existingSecret": "mine",
                            "keys": [{"name": "a", "sha256": "a" * 64, "roles": ["recommend"]}],
                        }
                    }
                }
            },
            "components.gateway.auth: keys and existingSecret are exclusive",
        ),
        (
            {
                "components": {
                    "gateway": {"auth": {"keys": [{"name": "smoke", "sha256": "a" * 64, "roles": ["admin"]}]}}
                }
            },
            "the name smoke belongs to the chart's own smoke key",
        ),
    ],
)
def test_inconsistent_values_fail_the_render_with_a_message(values: dict[str, Any], message: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmRenderError) as raised:
        render(values)
    assert message in str(raised.value)


def test_embedded_store_is_allowed_with_one_unscaled_features_replica() -> None:
    values = {
        "redis": {"enabled": False},
        "components": {"features": {"replicas": 1, "autoscaling": {"enabled": False}}},
    }
    assert "redis" not in render(values)["recsys/templates/redis.yaml"]


def test_a_user_password_and_a_digest_are_used() -> None:
    import base64

    import yaml

    rendered = render(
        {"redis": {"auth": {"password": "abc.DEF-123"}}, "image": {"digest": "sha256:" + "a" * 64}}
    )
    secret = next(
        d for d in yaml.safe_load_all(rendered["recsys/templates/redis.yaml"]) if d and d["kind"] == "Secret"
    )
    assert base64.b64decode(secret["data"]["redis-password"]).decode() == "abc.DEF-123"
    assert "recsys:0.1.0@sha256:" + "a" * 64 in rendered["recsys/templates/components.yaml"]
