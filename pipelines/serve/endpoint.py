"""Which Triton: the one place that turns the profile's environment into the server deploy, serve_check,
the gate and the CLI talk to.

- HTTP: ``RXREC_TRITON_URL`` (``host:port`` as infra/profiles/*.env, compose and the k8s ConfigMap write it;
  an ``http://`` prefix is accepted), else ``127.0.0.1:<serve.http_port>`` of params.yaml.
- gRPC: ``RXREC_TRITON_GRPC_URL`` (``host:port``), else the HTTP host with ``serve.grpc_port`` of params.yaml
  (Triton's own layout, 8000/8001, as compose and the k8s Service publish it). A Triton's HTTP API does not
  say where its gRPC listens, so a server with another layout needs the variable.
- ``RXREC_PROFILE`` (local, stack, kubernetes; unset = local) decides one thing only: whether this process
  may start a tritonserver of its own when nothing answers at the endpoint. The local profile may (a private
  server for serve_check or the gate, as `make demo` always did); the stack and kubernetes profiles never do:
  there the profile's Triton is the server, and an unreachable one is an error naming the URL and variable.

Pure: reads the environment and settings, never the network.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pipelines.core.config import ServeSettings

TRITON_URL_ENV = "RXREC_TRITON_URL"
TRITON_GRPC_URL_ENV = "RXREC_TRITON_GRPC_URL"
PROFILE_ENV = "RXREC_PROFILE"
PROFILES = ("local", "stack", "kubernetes")
LOCAL_PROFILE = "local"
LOCAL_HOST = "127.0.0.1"
PARAMS_SOURCE = "params.yaml serve ports"

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>\d{1,5})$")


class TritonEndpointError(ValueError):
    """RXREC_TRITON_URL, RXREC_TRITON_GRPC_URL or RXREC_PROFILE holds something that is not usable."""


class TritonUnreachable(ConnectionError):
    """The profile's Triton does not answer (and this profile may not start one)."""


Protocol = Literal["http", "grpc"]


@dataclass(frozen=True)
class TritonEndpoint:
    """Where the profile's Triton answers, and whether this process may start one there."""

    http_url: str  # host:port, as tritonclient.http takes it
    grpc_url: str  # host:port, as tritonclient.grpc takes it
    source: str  # RXREC_TRITON_URL, or PARAMS_SOURCE
    profile: str  # local | stack | kubernetes

    @property
    def host(self) -> str:
        return self.http_url.rsplit(":", 1)[0]

    @property
    def http_port(self) -> int:
        return int(self.http_url.rsplit(":", 1)[1])

    @property
    def configured(self) -> bool:
        """Whether the environment names the server (else params.yaml's local default)."""
        return self.source != PARAMS_SOURCE

    @property
    def may_start_local(self) -> bool:
        """Whether a tritonserver may be started here: local profile, and an address of this machine."""
        return self.profile == LOCAL_PROFILE and _is_loopback(self.host)

    def url(self, protocol: Protocol) -> str:
        if protocol not in ("http", "grpc"):
            raise TritonEndpointError(f"protocol must be http or grpc, got {protocol!r}")
        return self.http_url if protocol == "http" else self.grpc_url

    def describe(self) -> str:
        """E.g. 'the Triton at 127.0.0.1:8000 (RXREC_TRITON_URL, profile stack)'."""
        return f"the Triton at {self.http_url} ({self.source}, profile {self.profile})"

    def unreachable(self, detail: str) -> TritonUnreachable:
        """One line saying which server, from where, and what to do."""
        fix = f"start it or point {TRITON_URL_ENV} at a running Triton" if self.configured \
            else f"start it with `rxrec serve start`, or set {TRITON_URL_ENV} to the profile's Triton"
        return TritonUnreachable(f"{self.describe()} is unreachable ({detail}); {fix}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_host_port(value: str, variable: str) -> str:
    """``host:port`` (an ``http://`` prefix and a trailing '/' allowed) or TritonEndpointError naming the variable."""
    text = value.strip().removeprefix("http://").rstrip("/")
    match = _HOST_PORT.match(text)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise TritonEndpointError(f"{variable}={value!r} is not host:port (e.g. triton.rxrec.svc:8000 or "
                                  f"127.0.0.1:8000)")
    return text


def resolve_triton(serve: ServeSettings, environ: Mapping[str, str] | None = None) -> TritonEndpoint:
    """The profile's Triton from the environment, else params.yaml's serve ports on 127.0.0.1 (see module doc)."""
    env = os.environ if environ is None else environ
    profile = (env.get(PROFILE_ENV) or LOCAL_PROFILE).strip()
    if profile not in PROFILES:
        raise TritonEndpointError(f"{PROFILE_ENV}={profile!r} is not a profile: use one of {', '.join(PROFILES)}")
    configured = (env.get(TRITON_URL_ENV) or "").strip()
    if configured:
        http_url, source = parse_host_port(configured, TRITON_URL_ENV), TRITON_URL_ENV
    else:
        http_url, source = f"{LOCAL_HOST}:{serve.http_port}", PARAMS_SOURCE
    grpc = (env.get(TRITON_GRPC_URL_ENV) or "").strip()
    grpc_url = parse_host_port(grpc, TRITON_GRPC_URL_ENV) if grpc \
        else f"{http_url.rsplit(':', 1)[0]}:{serve.grpc_port}"
    return TritonEndpoint(http_url=http_url, grpc_url=grpc_url, source=source, profile=profile)
