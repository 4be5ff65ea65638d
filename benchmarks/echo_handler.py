"""TorchServe's own ceiling: a handler that only moves each request body to the GPU.

Used by ``benchmarks/bench_e2e.py`` to measure what TorchServe (frontend, batching, worker
protocol) sustains for the same payload with no model: each body is copied to the worker's device
and answered with a PeakNet-shaped JSON holding no peaks (so the load-test client checks it the
same way), one frame per leading entry of ``X-Shape``.
"""

import json

import torch
from ts.torch_handler.base_handler import BaseHandler

EMPTY_FRAME = {"num_peaks": 0, "panel": [], "ss": [], "fs": [], "npix": [], "intensity": []}


class EchoToDeviceHandler(BaseHandler):
    def initialize(self, context):
        gpu_id = context.system_properties.get("gpu_id")
        cuda = gpu_id is not None and torch.cuda.is_available()
        self.device = torch.device("cuda", int(gpu_id)) if cuda else torch.device("cpu")
        self.initialized = True

    def handle(self, data, context):
        answers = []
        for idx, row in enumerate(data):
            body = row.get("body") or row.get("data") or b""
            on_device = torch.frombuffer(bytearray(body), dtype=torch.uint8).to(self.device)
            headers = {k.lower(): v for k, v in context.get_all_request_header(idx).items() if isinstance(v, str)}
            shape = [int(s) for s in headers.get("x-shape", "1").split(",")]
            frames = shape[0] if len(shape) == 4 else 1
            context.set_response_content_type(idx, "application/json")
            answers.append(
                json.dumps(
                    {
                        "model": "echo",
                        "precision": "none",
                        "device": str(self.device),
                        "shape": [frames, *([1] * (4 - len(shape))), *shape[-3:]][-4:],
                        "dtype": headers.get("x-dtype", "uint8"),
                        "bytes": int(on_device.numel()),
                        "frames": [EMPTY_FRAME] * frames,
                    }
                )
            )
        return answers
