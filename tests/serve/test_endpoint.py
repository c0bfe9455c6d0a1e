"""Which Triton: RXREC_TRITON_URL / RXREC_TRITON_GRPC_URL / RXREC_PROFILE, else params.yaml's serve ports."""

from __future__ import annotations

import pytest

from pipelines.core.config import ServeSettings
from pipelines.serve.endpoint import PARAMS_SOURCE, TritonEndpointError, resolve_triton

SERVE = ServeSettings(http_port=8100, grpc_port=8101)


def test_unset_is_the_local_default_from_params_and_may_start_a_server():
    endpoint = resolve_triton(SERVE, {})
    assert (endpoint.http_url, endpoint.grpc_url, endpoint.source, endpoint.profile) == (
        "127.0.0.1:8100", "127.0.0.1:8101", PARAMS_SOURCE, "local")
    assert not endpoint.configured and endpoint.may_start_local
    assert endpoint.url("grpc") == "127.0.0.1:8101"


@pytest.mark.parametrize(("value", "http_url"), [
    ("triton.rxrec.svc.cluster.local:8000", "triton.rxrec.svc.cluster.local:8000"),
    ("http://127.0.0.1:41234/", "127.0.0.1:41234"),
    (" triton:8000 ", "triton:8000"),
    ("[::1]:8000", "[::1]:8000"),
])
def test_the_profiles_url_is_taken_as_written(value, http_url):
    endpoint = resolve_triton(SERVE, {"RXREC_TRITON_URL": value, "RXREC_PROFILE": "stack"})
    assert endpoint.http_url == http_url and endpoint.source == "RXREC_TRITON_URL" and endpoint.configured
    assert endpoint.grpc_url == f"{endpoint.host}:8101", "gRPC: same host, params.yaml serve.grpc_port"
    assert not endpoint.may_start_local, "a remote profile never starts a tritonserver"
    assert endpoint.describe() == f"the Triton at {http_url} (RXREC_TRITON_URL, profile stack)"


def test_grpc_url_has_its_own_variable():
    endpoint = resolve_triton(SERVE, {"RXREC_TRITON_URL": "127.0.0.1:40000", "RXREC_TRITON_GRPC_URL": "127.0.0.1:40007"})
    assert endpoint.url("http") == "127.0.0.1:40000" and endpoint.url("grpc") == "127.0.0.1:40007"


def test_only_the_local_profile_on_a_local_address_may_start_a_server():
    def may_start(url: str, profile: str | None) -> bool:
        return resolve_triton(SERVE, {"RXREC_TRITON_URL": url, **({"RXREC_PROFILE": profile} if profile else {})}
                              ).may_start_local

    assert may_start("127.0.0.1:8000", "local") and may_start("localhost:8000", None)
    assert not may_start("triton:8000", "local"), "the local profile cannot start a server on another host"
    assert not may_start("127.0.0.1:8000", "stack") and not may_start("127.0.0.1:8000", "kubernetes")


@pytest.mark.parametrize(("env", "message"), [
    ({"RXREC_TRITON_URL": "triton"}, "RXREC_TRITON_URL='triton' is not host:port"),
    ({"RXREC_TRITON_URL": "triton:http"}, "RXREC_TRITON_URL='triton:http' is not host:port"),
    ({"RXREC_TRITON_URL": "triton:0"}, "RXREC_TRITON_URL='triton:0' is not host:port"),
    ({"RXREC_TRITON_URL": "triton:70000"}, "is not host:port"),
    ({"RXREC_TRITON_URL": ":8000"}, "is not host:port"),
    ({"RXREC_TRITON_URL": "https://triton:8000"}, "is not host:port"),
    ({"RXREC_TRITON_URL": "http://triton:8000/v2"}, "is not host:port"),
    ({"RXREC_TRITON_GRPC_URL": "triton:grpc"}, "RXREC_TRITON_GRPC_URL='triton:grpc' is not host:port"),
    ({"RXREC_PROFILE": "prod"}, "RXREC_PROFILE='prod' is not a profile: use one of local, stack, kubernetes"),
])
def test_malformed_settings_are_one_clear_error(env, message):
    with pytest.raises(TritonEndpointError, match=message.replace("(", r"\(").replace("[", r"\[")) as caught:
        resolve_triton(SERVE, env)
    assert "\n" not in str(caught.value)


def test_empty_variables_count_as_unset():
    assert resolve_triton(SERVE, {"RXREC_TRITON_URL": "", "RXREC_TRITON_GRPC_URL": " ", "RXREC_PROFILE": ""}) \
        == resolve_triton(SERVE, {})


def test_the_process_environment_is_read_by_default(monkeypatch):
    monkeypatch.setenv("RXREC_TRITON_URL", "127.0.0.1:45678")
    monkeypatch.setenv("RXREC_PROFILE", "kubernetes")
    endpoint = resolve_triton(SERVE)
    assert endpoint.http_url == "127.0.0.1:45678" and endpoint.profile == "kubernetes"


@pytest.mark.parametrize(("url", "remedy"), [("127.0.0.1:8000", "rxrec serve start"),
                                             ("triton.internal:8000", "RXREC_TRITON_URL")])
def test_an_unreachable_server_is_named_with_the_remedy_of_its_profile(url, remedy):
    """A local server is started with `rxrec serve start`; the profile's remote one is not rxrec's to start."""
    from pipelines.serve.client import _unavailable

    error = _unavailable(ConnectionRefusedError("refused"), url=url, protocol="http", timeout_s=2)
    assert error is not None and url in str(error) and remedy in str(error)
