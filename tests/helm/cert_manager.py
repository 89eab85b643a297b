"""JSON schemas of the cert-manager.io/v1 objects the chart renders (Certificate, Issuer): the fields it
uses, with the types and enums of cert-manager's CRDs (deploy/crds/cert-manager.io_certificates.yaml and
_issuers.yaml of cert-manager v1.18). The Kubernetes schemas do not know these kinds; any other field is
refused here, so a misspelt one fails the chart tests instead of cert-manager's admission."""

from __future__ import annotations

from typing import Any

import jsonschema

_STRINGS = {"type": "array", "items": {"type": "string"}}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "labels": {"type": "object"},
        "annotations": {"type": "object"},
    },
}
_ISSUER_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "kind": {"type": "string"}, "group": {"type": "string"}},
}
USAGES = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
]

CERTIFICATE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["issuerRef", "secretName"],
            "properties": {
                "secretName": {"type": "string"},
                "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": _STRINGS,
                "ipAddresses": _STRINGS,
                "isCA": {"type": "boolean"},
                "duration": {"type": "string"},
                "renewBefore": {"type": "string"},
                "usages": {"type": "array", "items": {"enum": USAGES}},
                "privateKey": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                        "size": {"type": "integer"},
                    },
                },
                "issuerRef": _ISSUER_REF,
            },
        },
    },
}

ISSUER: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Issuer"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
            "properties": {
                "selfSigned": {"type": "object", "additionalProperties": False, "properties": {}},
                "ca": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["secretName"],
                    "properties": {"secretName": {"type": "string"}},
                },
            },
        },
    },
}

SCHEMAS = {"Certificate": CERTIFICATE, "Issuer": ISSUER}


def validate(obj: dict[str, Any]) -> str | None:
    """Why `obj` is not a cert-manager object the CRDs accept, or None."""
    schema = SCHEMAS.get(obj.get("kind", ""))
    if schema is None:
        return f"no schema for cert-manager kind {obj.get('kind')!r}"
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as e:
        return f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
    return None
