"""One real tritonserver for the serving tests of a session (starting one takes seconds of the test run).

Its repository starts empty (explicit model control): each module writes its models under names of
its own into `triton.repo` and loads them with `toy_triton.loaded`, which unloads them afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipelines.serve.triton_server import TritonServer
from tests.serve.toy_triton import running_server


@pytest.fixture(scope="session")
def triton(tmp_path_factory) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("triton")
    (work / "repo").mkdir()
    with running_server(work / "repo", work) as server:
        yield server
