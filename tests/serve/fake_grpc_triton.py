"""A fake Triton gRPC server in this process, for load-generator tests: a known service time per request.

It answers ModelInfer like Triton (ModelInferResponse with model_version and item_ids) after
`service_s`, one request at a time when `serial`, and refuses a session holding a negative id with
INVALID_ARGUMENT; every other method is UNIMPLEMENTED.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import numpy as np


class FakeTriton:
    def __init__(self, service_s: float, serial: bool, version: str) -> None:
        self.service_s, self.version = service_s, version
        self.lock = threading.Lock() if serial else None

    def ModelInfer(self, request, context):  # the gRPC method name
        import grpc
        from tritonclient.grpc import service_pb2

        ids = np.frombuffer(request.raw_input_contents[0], dtype=np.int64)
        if self.lock is not None:
            with self.lock:
                time.sleep(self.service_s)
        else:
            time.sleep(self.service_s)
        if ids.min() < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input_ids contains negative id {ids.min()}")
        response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version=self.version)
        out = response.outputs.add()
        out.name, out.datatype = "item_ids", "INT64"
        out.shape.extend([1, 1])
        response.raw_output_contents.append(np.asarray([ids[-1]], dtype=np.int64).tobytes())
        return response


@contextmanager
def fake_triton_server(service_s: float, *, serial: bool = False, version: str = "1",
                       max_workers: int = 64) -> Iterator[str]:
    """Start the fake on a free 127.0.0.1 port; yields its gRPC address and stops it afterwards."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    class Servicer(FakeTriton, service_pb2_grpc.GRPCInferenceServiceServicer):
        pass

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(service_s, serial, version), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)
