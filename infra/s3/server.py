"""Local S3 emulator for the DVC remote: moto's server on 127.0.0.1, with the bucket created.

By hand:
    .venv/bin/python infra/s3/server.py                      # http://127.0.0.1:5555, bucket rxrec-dvc
    export AWS_ENDPOINT_URL_S3=http://127.0.0.1:5555 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
    .venv/bin/dvc push -r s3 && .venv/bin/dvc pull -r s3
The tests start it the same way on a free port (tests/e2e/test_dvc_remote.py). Data lives in
memory: stopping the server (Ctrl-C) forgets it. At scale the `s3` remote in .dvc/config points at
real S3 and no endpoint variable is set.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

DEFAULT_PORT = 5555
DEFAULT_BUCKET = "rxrec-dvc"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("RXREC_S3_PORT", DEFAULT_PORT)))
    parser.add_argument("--bucket", default=os.environ.get("RXREC_S3_BUCKET", DEFAULT_BUCKET))
    args = parser.parse_args()
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    endpoint = f"http://{args.host}:{args.port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=args.bucket)
    print(f"S3 emulator (moto) ready at {endpoint}, bucket {args.bucket}", flush=True)
    print(f"export AWS_ENDPOINT_URL_S3={endpoint} " + " ".join(f"{k}={v}" for k, v in CREDENTIALS.items()),
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        time.sleep(0.2)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
