"""Triton as a long-running service of the stack: TritonServer (pipelines/serve) until SIGTERM or SIGINT.

TritonServer stops its server when the Python that started it exits, so the stack runs it under this
small foreground process: start on 127.0.0.1 with explicit model control over the model repository,
load the models that already have a version folder, print "ready", wait for a signal, stop cleanly.

    python infra/stack/triton_service.py --repo triton_repo --http-port 8000 --grpc-port 8001 \
        --metrics-port 8002 --log-dir var/stack/triton
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipelines.repository.versions import list_versions
from pipelines.serve.triton_server import TritonError, TritonServer


def deployed_models(repo: Path) -> list[str]:
    """Models of the repository that have at least one numbered version folder."""
    return sorted(d.name for d in repo.iterdir() if d.is_dir() and list_versions(repo, d.name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--startup-timeout", type=float, default=180)
    parser.add_argument("--pid-file", type=Path, help="where to write tritonserver's pid (it leads its own group)")
    args = parser.parse_args()
    args.repo.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = TritonServer(args.repo, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, startup_timeout_s=args.startup_timeout,
                          log_dir=args.log_dir, backend_root=args.log_dir / "backends")
    try:
        server.start()
        if args.pid_file:
            args.pid_file.write_text(str(server.pid))
        for model in deployed_models(args.repo):
            try:
                server.load(model, timeout_s=args.startup_timeout)
            except TritonError as exc:  # one broken model must not take the server down
                print(f"model {model} not loaded: {exc}", file=sys.stderr, flush=True)
        print(f"Triton ready at http://{server.url} (repository {args.repo})", flush=True)
        while not stop.is_set() and server.is_live():
            stop.wait(1.0)
        return 0 if stop.is_set() else 1
    except TritonError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
