"""A stand-in for the Kubernetes API server, just enough for Helm's `lookup` of Secrets: the
discovery document of core/v1 and GET of one namespaced Secret (404 when absent). The only mock
in the chart tests: an upgrade is rendered by Helm's engine against the Secrets a previous
render created, as `helm upgrade` would see them in the cluster."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CORE_V1 = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "v1",
    "resources": [
        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret", "verbs": ["get"]}
    ],
}
NOT_FOUND = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}


@contextmanager
def fake_kube_api(secrets: dict[tuple[str, str], dict[str, Any]]) -> Iterator[str]:
    """Serve `secrets` ({(namespace, name): Secret} as the API returns them); yields a kubeconfig
    (YAML is a superset of JSON) pointing at the server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            parts = path.strip("/").split("/")
            body, code = NOT_FOUND, 404
            if parts == ["api", "v1"]:
                body, code = CORE_V1, 200
            elif len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "secrets":
                found = secrets.get((parts[3], parts[5]))
                if found is not None:
                    body, code = found, 200
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield kubeconfig(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def kubeconfig(server: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": server}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
            "users": [{"name": "fake", "user": {"token": "fake"}}],
        }
    )
