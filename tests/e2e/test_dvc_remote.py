"""raw and validated data are DVC stage outputs that round-trip through both remotes of .dvc/config.

Real components: the project's dvc.yaml stages `generate` and `validate` run by `dvc repro` in a
scratch DVC repository, `dvc push`/`dvc pull` against the local-folder default remote and against
the `s3` remote served by moto (infra/s3/server.py) on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines.core.config import PROJECT_ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TINY = {"n_products": 120, "n_users": 300}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free port, started by the project's launcher, with the bucket created."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "infra" / "s3" / "server.py"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        for line in proc.stdout:
            if "ready at" in line:
                break
            if time.time() > deadline:
                raise TimeoutError("S3 emulator did not start")
        else:
            raise RuntimeError(f"S3 emulator exited with {proc.wait()}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _dvc(repo: Path, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "dvc"), *args], check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory, s3_endpoint):
    """A scratch git+DVC repo holding the project's remotes and its generate/validate stages."""
    root = tmp_path_factory.mktemp("dvcrepo")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RXREC_WORKDIR": str(root),
           "RXREC_PARAMS": str(root / "params.yaml"), "AWS_ENDPOINT_URL_S3": s3_endpoint,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q", env=env)
    config = (PROJECT_ROOT / ".dvc" / "config").read_text()
    assert "remote = local" in config and "s3://" in config
    # Same remotes; the local folder moves into the scratch area.
    (root / ".dvc" / "config").write_text(config.replace("../var/dvc-remote", "../local-remote"))
    (root / "pipelines").symlink_to(PROJECT_ROOT / "pipelines")
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"].update(TINY)
    params["validate"].update({"min_products": 50, "min_events": 200})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {k: stages[k] for k in ("generate", "validate")}}))
    _dvc(root, "repro", "validate", env=env)
    return root, env


def _lock_md5(root: Path) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", []) if "md5" in o}


@pytest.mark.timeout(900)  # dvc repro of generate+validate, then push and pull (300 s each at most)
@pytest.mark.parametrize("remote", ["local", "s3"])
def test_push_pull_round_trip(repo, remote: str) -> None:
    root, env = repo
    before = _lock_md5(root)
    assert before["data/raw"].endswith(".dir") and before["data/validated"].endswith(".dir")
    files = {p.relative_to(root): p.read_bytes() for d in ("data/raw", "data/validated") for p in (root / d).rglob("*")
             if p.is_file()}
    assert Path("data/raw/events.parquet") in files and Path("data/validated/profile.json") in files
    args = [] if remote == "local" else ["-r", "s3"]  # local is the default remote
    _dvc(root, "push", *args, env=env)
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / "data" / "raw")
    shutil.rmtree(root / "data" / "validated")
    _dvc(root, "pull", *args, env=env)
    after = {p.relative_to(root): p.read_bytes() for d in ("data/raw", "data/validated") for p in (root / d).rglob("*")
             if p.is_file()}
    assert after == files
    assert "up to date" in _dvc(root, "status", env=env).lower() or _dvc(root, "status", env=env).strip() == ""
    assert _lock_md5(root) == before
