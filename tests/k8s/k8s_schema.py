"""Validate Kubernetes objects against the official OpenAPI schemas (kubernetes-validate).

Strict: unknown fields are rejected, as the API server does with `kubectl apply --validate=strict`.
Used by the chart tests and by the pod-spec tests (a rendered V1Pod, via the client's
`ApiClient().sanitize_for_serialization(pod)`). Custom resources the chart renders (the Gateway
API HTTPRoute) are validated against the JSON schemas under schemas/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

# The Kubernetes minor the platform targets (Chart.yaml kubeVersion is the floor).
KUBERNETES_VERSION = "1.35.0"


# (apiVersion, kind) of a custom resource -> its schema (kubernetes-validate knows only built-in kinds).
CUSTOM_RESOURCE_SCHEMAS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): Path(__file__).parent / "schemas" / "httproute-v1.json",
}


class K8sSchemaError(AssertionError):
    """An object that the API server would reject."""


def validate_k8s_object(obj: dict[str, Any]) -> None:
    """Raise K8sSchemaError when `obj` is not a valid object of its apiVersion/kind."""
    where = f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"
    custom = CUSTOM_RESOURCE_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
    if custom is not None:
        try:
            jsonschema.Draft7Validator(json.loads(custom.read_text())).validate(obj)
        except jsonschema.ValidationError as err:
            path = "/".join(str(part) for part in err.path) or "<root>"
            raise K8sSchemaError(f"{where}: {path}: {err.message}") from None
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = "/".join(str(part) for part in err.path) or "<root>"
        raise K8sSchemaError(f"{where}: {path}: {err.message}") from None
    except kubernetes_validate.SchemaNotFoundError as err:
        raise K8sSchemaError(f"{where}: {err.message}") from None
    except KeyError as err:
        raise K8sSchemaError(f"{where}: missing {err}") from None
