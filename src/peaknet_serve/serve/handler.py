"""TorchServe handler: detector frames in, Bragg-peak lists out.

TorchServe calls :meth:`PeakNetHandler.handle` with a batch of requests (``batchSize`` and
``maxBatchDelay`` in model-config.yaml). For each batch:

1. **decode** every request on the host into a zero-copy ``(N, P, H, W)`` view in its wire dtype
   (:mod:`peaknet_serve.decode`); a bad request gets its own 4xx and leaves the others alone;
2. **upload** the panels of all good requests that share (H, W, dtype) through pinned memory to the
   device in that dtype (uint16 moves half the bytes of float32); with ``h2d_overlap``
   one micro-batch at a time on a side stream, the next copy overlapping the current compute;
3. **infer**: normalise, pad and cast on the device, run PeakNet in micro-batches under autocast,
   threshold the class-difference map and extract 8-connected peaks (:mod:`peaknet_serve.device.finder`),
   the deployment's bad-pixel mask (``bad_pixel_mask``, :mod:`peaknet_serve.config.bad_pixels`)
   applied to every frame (a request of another panel layout is refused: 400 ``mask_mismatch``)
   and a request's own mask (multipart part ``mask``, :mod:`peaknet_serve.decode.mask`) to that
   request's frames only, both where both are given;
4. **answer**: one device-to-host copy of the peak table per group, split back to requests and
   frames, JSON by default or a CrystFEL CXI file with ``Accept: application/x-hdf5``.

Requests in the Open Inference Protocol (KServe v2 / Triton HTTP: ``POST /v2/models/peaknet/infer``
with a JSON inference header, optionally binary tensors after it) are recognised per request
(not on the ``/predictions`` route, and :func:`peaknet_serve.decode.oip.is_oip_request`), decoded by :mod:`peaknet_serve.decode.oip`
and answered by :mod:`peaknet_serve.encode.oip`, errors included; they share batches with native
requests. The management API's ``GET /models/peaknet?customized=true`` returns the protocol's
model metadata (:meth:`PeakNetHandler.model_metadata`).

All imports are absolute (``peaknet_serve.*``): the archive holds the ``peaknet_serve`` package next to this file.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

from peaknet_serve.config.bad_pixels import load_bad_pixel_mask, mask_summary
from peaknet_serve.config.precision import dtype_name
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.decode import decode_oip_request, decode_request, default_sandbox, is_oip_request
from peaknet_serve.decode.options import request_threshold
from peaknet_serve.device.finder import InsufficientMemory
from peaknet_serve.device.peaks import peaks_to_frames
from peaknet_serve.device.transfer import PanelSource, upload_panels
from peaknet_serve.encode.cxi import cxi_response
from peaknet_serve.encode.oip import model_metadata, oip_response, peak_outputs
from peaknet_serve.encode.response import json_response
from peaknet_serve.errors import ERROR_BODY_HEADER, BadRequest, RequestError, ServerFault
from peaknet_serve.pipeline import build_finder, calibrate_budget
from peaknet_serve.serve.budget import DEFAULT_RESPONSE_TIMEOUT_S, Verdict, WorkBudget
from peaknet_serve.serve.http import (
    HTTP_PHRASES,
    Answer,
    Decoded,
    as_oip_error,
    error_answer,
    mark_repeated_fields,
    mask_label,
    on_predictions_route,
    request_headers,
    request_mask_part,
    request_payload,
    server_error,
    wants_cxi,
)
from peaknet_serve.serve.metrics import HandlerMetrics

log = logging.getLogger(__name__)


def _seconds(value: float | None) -> str:
    """``value`` seconds for a log line, ``-`` when that step did not happen."""
    return "-" if value is None else f"{value:.1f}"


def _package_source(package: dict) -> str:
    """Where an AOT package of :attr:`~peaknet_serve.pipeline.Pipeline.packages` came from, for a log line."""
    builder = "an unknown worker" if package["built_by"] is None else f"worker pid {package['built_by']}"
    return {
        "built": f"built by this worker (pid {package['built_by']})",
        "waited": f"built by {builder} while this one waited",
        "found": f"found in the cache (built by {builder})",
    }[package["source"]]


def batch_parts(members: list[Decoded], min_panels: int) -> list[list[Decoded]]:
    """Consecutive runs of ``members``, each closed once it holds at least ``min_panels`` panels (the
    micro-batch size, so that splitting adds no padded micro-batch); the last may hold fewer."""
    parts: list[list[Decoded]] = [[]]
    panels = 0
    for member in members:
        if panels >= min_panels:
            parts.append([])
            panels = 0
        parts[-1].append(member)
        n, p = member.frames.array.shape[:2]
        panels += n * p
    return [part for part in parts if part]


def batch_good_pixels(
    members: list[Decoded], deployment: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """The good pixels the finder gets for the panels of ``members``, run together frame-major.

    Args:
        members: the requests of one batch part, in the order their panels run.
        deployment: (P, H, W) bool on ``device``, the deployment's mask (True = good), or None.

    Returns:
        ``deployment`` itself when no member sent its own mask; else (B, H, W) bool on ``device``,
        B the panels of all members: a member's own (M, P, H, W) mask broadcast over its N frames
        and AND-ed with ``deployment``, a member without one gets ``deployment`` (or every pixel
        good), so no request's mask reaches another request's panels.
    """
    if all(m.frames.good_pixels is None for m in members):
        return deployment
    rows = []
    for member in members:
        n, p, h, w = member.frames.array.shape
        own = member.frames.good_pixels
        good = torch.ones((1, p, h, w), dtype=torch.bool, device=device) if own is None else torch.from_numpy(own)
        good = good.to(device)
        if deployment is not None:
            good = good & deployment
        rows.append(good.expand(n, p, h, w).reshape(n * p, h, w))
    return torch.cat(rows)


def select_device(gpu_id: Any) -> torch.device:
    """The worker's device: ``cuda:<gpu_id>`` when TorchServe assigned a GPU and CUDA works, else CPU."""
    if gpu_id is not None and str(gpu_id) != "" and torch.cuda.is_available():
        return torch.device("cuda", int(gpu_id))
    return torch.device("cpu")


def mark_capped(frames: list[dict[str, Any]], capped: np.ndarray, panels_per_frame: int) -> list[dict[str, Any]]:
    """Add ``capped`` (bool) and ``capped_panels`` (panel indices) to each frame's dict, in place.

    Args:
        frames: per-frame dicts of :func:`~peaknet_serve.device.peaks.peaks_to_frames`.
        capped: bool ``(len(frames) * panels_per_frame,)``, frame-major: the panels whose labelling
            the finder's limits cut short (they report no peaks).
    """
    by_frame = capped.reshape(len(frames), panels_per_frame)
    for frame, panels in zip(frames, by_frame, strict=True):
        frame["capped_panels"] = np.flatnonzero(panels).tolist()
        frame["capped"] = bool(frame["capped_panels"])
    return frames


class PeakNetHandler(BaseHandler):
    """PeakNet peak finder for TorchServe (see the module docstring for the request flow)."""

    def __init__(self) -> None:
        super().__init__()
        self.initialized = False

    # -- start-up -------------------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = Path(properties.get("model_dir", "."))
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.settings = settings = HandlerSettings.from_mapping(yaml_config.get("handler"))
        self.device = select_device(properties.get("gpu_id"))
        self.model_name = getattr(context, "model_name", None) or "peaknet"
        manifest = getattr(context, "manifest", None) or {}
        self.model_version = str(manifest.get("model", {}).get("modelVersion", "")) or None
        self.metrics = HandlerMetrics(getattr(context, "metrics", None), self.model_name)

        threads = settings.torch_threads or (1 if self.device.type == "cuda" else None)
        if threads:
            # Every worker is its own process: at torch's default (all cores each) several workers,
            # the frontend and the clients fight over the CPU that launches the GPU's kernels.
            torch.set_num_threads(threads)
        if settings.gpu_memory_fraction is not None and self.device.type == "cuda":
            # Workers sharing a GPU each get a slice: an oversized batch then fails (and is split,
            # or answered 503) in its own worker instead of starving the others.
            torch.cuda.set_per_process_memory_fraction(settings.gpu_memory_fraction, self.device)
        self.good_pixels = None  # (P, H, W) bool on the device: the deployment's bad-pixel mask
        if settings.bad_pixel_mask is not None:
            good = load_bad_pixel_mask(settings.bad_pixel_mask, model_dir)
            log.info("bad-pixel mask %s: %s", settings.bad_pixel_mask, mask_summary(good))
            self.good_pixels = torch.from_numpy(good).to(self.device)
        pipeline = build_finder(settings, self.device, model_dir)
        self.mode, self.model, self.finder = pipeline.mode, pipeline.model, pipeline.finder
        self.backend = pipeline.backend
        self.dtype = pipeline.mode.dtype
        self.budget = WorkBudget(
            float(yaml_config.get("responseTimeout", DEFAULT_RESPONSE_TIMEOUT_S)), settings.batch_time_fraction
        )
        if self.budget.fraction > 0 and settings.warmup_shapes:
            self._calibrate()
        if not mark_repeated_fields():
            log.warning("repeated form fields cannot be detected in this TorchServe")
        default_sandbox().start()  # the HDF5 reader process: the first HDF5 request should not pay for it

        params = sum(p.numel() for p in self.model.parameters())
        log.info(
            "PeakNet ready: %s, %.2fM parameters, %s on %s, weights %.1f MiB, max_batch_panels=%d, "
            "start-up %.1f s (load %.1f, tune %.1f, warm-up %.1f, compile cache %s), compile backend %s",
            settings.model_label,
            params / 1e6,
            pipeline.mode.describe(),
            self.device,
            pipeline.weight_bytes / 2**20,
            settings.max_batch_panels,
            pipeline.startup_s,
            pipeline.phases["load"],
            pipeline.phases["tune"],
            pipeline.phases["warm-up"],
            pipeline.compile_cache,
            self.compile_backend(),
        )
        for package in pipeline.packages:
            log.info(
                "AOT package for %s: %s, built in %s s, waited %s s, loaded in %s s, first call %s s",
                tuple(package["shape"]),
                _package_source(package),
                _seconds(package["build_s"]),
                _seconds(package["wait_s"]),
                _seconds(package["load_s"]),
                _seconds(package["first_call_s"]),
            )
        self.initialized = True

    def _calibrate(self) -> None:
        """The work budget's fixed and per-pixel costs on this device, from timed runs after warm-up."""
        timed = calibrate_budget(self.budget, self.finder, self.settings)
        log.info(
            "work budget: %s -> %.3g s + %.3g s per Mpixel on %s, %.1f s per batch (%.0f%% of responseTimeout %.0f s)",
            ", ".join(f"{'x'.join(map(str, shape))} panels in {seconds:.3g} s" for shape, seconds in timed),
            self.budget.overhead_s,
            1e6 * self.budget.seconds_per_pixel,
            self.device,
            self.budget.budget_s,
            100 * self.budget.fraction,
            self.budget.response_timeout_s,
        )

    # -- serving ---------------------------------------------------------------------------
    def handle(self, data: list[Mapping[str, Any]], context: Any) -> list[Any]:
        """Answer every request of the batch; never raises (a failure answers its requests only)."""
        if context.get_request_header(0, "describe") == "True":  # GET /models/peaknet?customized=true
            return [json.dumps(self.model_metadata())]
        answers: dict[int, Answer] = {}
        protocols: dict[int, str] = {}
        handle_started = time.perf_counter()
        try:
            started = time.perf_counter()
            decoded = self._admit(self._decode_all(data, context, answers, protocols), answers)
            self.metrics.timing("PeakNetDecodeMs", 1e3 * (time.perf_counter() - started), "decode")
            self.metrics.gauge("PeakNetBatchRequests", len(data), unit="count")
            groups: dict[tuple[int, int, str, float | None], list[Decoded]] = defaultdict(list)
            for item in decoded:
                groups[item.group_key].append(item)
            ran = False
            for members in groups.values():
                for part in batch_parts(members, self.settings.max_batch_panels):
                    pixels = sum(m.frames.array.size for m in part)
                    elapsed = time.perf_counter() - handle_started
                    if ran and not self.budget.ends_in_time(elapsed, pixels):
                        answers.update(self._late(part, elapsed))
                        continue
                    answers.update(self._answer_group(part))
                    ran = True
        except Exception as exc:  # noqa: BLE001 - last resort: the worker must survive
            log.exception("batch failed")
            for idx in range(len(data)):
                answers.setdefault(idx, server_error(500, "internal_error", f"{type(exc).__name__}: {exc}"))
        responses = []
        for idx in range(len(data)):
            protocol = protocols.get(idx, "native")
            answer = answers[idx]
            responses.append(self._respond(context, idx, as_oip_error(answer) if protocol == "oip" else answer))
        elapsed = time.perf_counter() - handle_started
        for idx in range(len(data)):
            self.metrics.histogram("PeakNetRequestSeconds", elapsed, Protocol=protocols.get(idx, "native"))
        self.metrics.timing("PeakNetHandleMs", 1e3 * elapsed, "handle")
        self.metrics.count("PeakNetBatches", 1)
        return responses

    def model_metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol's model metadata of the served model."""
        return model_metadata(
            self.model_name,
            self.model_version,
            parameters={
                "model": self.settings.model_label,
                "precision": dtype_name(self.dtype),
                "device": str(self.device),
                "hit_min_peaks": self.settings.hit_min_peaks,
                "serving_mode": self.mode.describe(),
                "compile_backend": self.compile_backend(),
                "bad_pixel_mask": "none" if self.good_pixels is None else "x".join(map(str, self.good_pixels.shape)),
            },
        )

    def compile_backend(self) -> str:
        """The compiled network's backend and why (``auto -> aoti (g++ at ...)``), or ``none (eager)``."""
        return self.backend.describe() if self.backend is not None else "none (eager)"

    def _decode_all(
        self, data: list[Mapping[str, Any]], context: Any, answers: dict[int, Answer], protocols: dict[int, str]
    ) -> list[Decoded]:
        decoded = []
        for idx, row in enumerate(data):
            try:
                headers, field_types = request_headers(context, idx)
                cxi = wants_cxi(headers)
                body, content_type, options = request_payload(row, headers, field_types)
                mask = request_mask_part(row, headers, field_types)
                if not on_predictions_route(headers) and is_oip_request(headers, memoryview(body)):
                    protocols[idx] = "oip"
                    if mask is not None:
                        raise BadRequest(
                            "bad_option",
                            "an Open Inference Protocol request takes no mask part; send frames with their mask to "
                            "/predictions/peaknet as multipart/form-data (parts 'data' and 'mask').",
                        )
                    request = decode_oip_request(body, headers, self.settings.limits)
                    self._check_mask_fits(request.frames.array.shape)
                    decoded.append(Decoded(idx, request.frames, cxi=False, oip=request))
                    continue
                threshold = request_threshold(options)
                frames = decode_request(body, content_type, options, self.settings.limits, mask=mask)
                self._check_mask_fits(frames.array.shape)
                decoded.append(Decoded(idx, frames, cxi, threshold=threshold))
            except RequestError as error:
                answers[idx] = error_answer(error)
                self.metrics.count("PeakNetBadRequests", 1, ErrorType=error.type)
            except ServerFault as fault:
                log.warning("request %d: %s", idx, fault)
                answers[idx] = error_answer(fault)
                self.metrics.count("PeakNetServerErrors", 1, ErrorType=fault.type)
            except Exception as exc:  # noqa: BLE001 - a decoder bug fails this request, not its batch-mates
                log.exception("decoding request %d failed", idx)
                answers[idx] = server_error(500, "decode_failed", f"{type(exc).__name__}: {exc}")
                self.metrics.count("PeakNetServerErrors", 1, ErrorType="decode")
        return decoded

    def _check_mask_fits(self, shape: tuple[int, ...]) -> None:
        """400 ``mask_mismatch`` unless (N, P, H, W) frames have the bad-pixel mask's (P, H, W)."""
        if self.good_pixels is not None and tuple(shape[1:]) != tuple(self.good_pixels.shape):
            raise BadRequest(
                "mask_mismatch",
                f"this server applies a bad-pixel mask of (panels, H, W) = {tuple(self.good_pixels.shape)}; "
                f"the request's frames are {tuple(shape[1:])}: send frames of that detector layout",
            )

    def _admit(self, decoded: list[Decoded], answers: dict[int, Answer]) -> list[Decoded]:
        """The requests this batch can run inside responseTimeout; the others are answered 413 or 503."""
        verdicts = self.budget.plan([item.frames.array.size for item in decoded])
        admitted = []
        for item, verdict in zip(decoded, verdicts):
            pixels = item.frames.array.size
            if verdict is Verdict.RUN:
                admitted.append(item)
            elif verdict is Verdict.TOO_LARGE:
                n = max(item.frames.array.shape[0], 1)
                message = self.budget.too_large_message(pixels, pixels // n, str(self.device))
                answers[item.idx] = server_error(413, "too_large", message)
                self.metrics.count("PeakNetBadRequests", 1, ErrorType="too_large")
            else:
                answers[item.idx] = self._busy(self.budget.busy_message(pixels))
        return admitted

    def _late(self, members: list[Decoded], elapsed_s: float) -> dict[int, Answer]:
        """503 busy for requests that the running batch has no time left for."""
        return {m.idx: self._busy(self.budget.late_message(elapsed_s, m.frames.array.size)) for m in members}

    def _busy(self, message: str) -> Answer:
        """One request's 503 ``busy`` with the budget's Retry-After, counted in PeakNetBusy."""
        self.metrics.count("PeakNetBusy", 1)
        return server_error(503, "busy", message, retry_after_s=self.budget.retry_after_s())

    def _answer_group(self, members: list[Decoded]) -> dict[int, Answer]:
        """Run requests of one (H, W, dtype, threshold) group (a part of it: :func:`batch_parts`) through the
        network together."""
        group_started = time.perf_counter()
        finder = self.finder.with_threshold(members[0].threshold)
        try:
            arrays = [m.frames.array for m in members]
            good = batch_good_pixels(members, self.good_pixels, self.device)
            if self.settings.h2d_overlap:  # copies overlap compute: timed with it
                started = time.perf_counter()
                result = finder.find_pipelined(PanelSource(arrays), good_pixels=good)
            else:
                started = time.perf_counter()
                panels = upload_panels(arrays, self.device)
                self.metrics.timing("PeakNetH2DMs", 1e3 * (time.perf_counter() - started), "h2d")
                started = time.perf_counter()
                result = finder.find(panels, good_pixels=good)
            table = result.table.to_host()  # the one device-to-host copy
            nonfinite = int(result.nonfinite)
            capped = result.capped.cpu().numpy()
            self.metrics.timing("PeakNetInferenceMs", 1e3 * (time.perf_counter() - started), "inference")
            self.budget.observe(sum(a.size for a in arrays), time.perf_counter() - group_started)
        except InsufficientMemory as exc:
            log.warning("%s", exc)
            return {
                m.idx: server_error(
                    503, "insufficient_memory", f"{exc}; retry, or send fewer frames per request", retry_after_s=1
                )
                for m in members
            }
        except Exception as exc:  # noqa: BLE001 - this group's requests fail, the rest go on
            log.exception("inference failed for %d request(s)", len(members))
            self.metrics.count("PeakNetServerErrors", len(members), ErrorType="inference")
            return {m.idx: server_error(500, "inference_failed", f"{type(exc).__name__}: {exc}") for m in members}

        started = time.perf_counter()
        answers, first_image, peaks_per_frame, capped_frames = {}, 0, [], 0
        for member in members:
            n, p, h, w = member.frames.array.shape
            frames = mark_capped(
                peaks_to_frames(table, n, p, first_image), capped[first_image : first_image + n * p], p
            )
            capped_frames += sum(f["capped"] for f in frames)
            first_image += n * p
            peaks_per_frame += [f["num_peaks"] for f in frames]
            answers[member.idx] = self._success(member, frames, finder.threshold)
        self.metrics.timing("PeakNetPostprocessMs", 1e3 * (time.perf_counter() - started), "postprocess")
        frames_total, peaks_total = len(peaks_per_frame), sum(peaks_per_frame)
        self.metrics.count("PeakNetFramesServed", frames_total)
        self.metrics.frame_peaks(peaks_per_frame, self.settings.hit_min_peaks)
        self.metrics.count("PeakNetPanelsServed", first_image)
        self.metrics.gauge("PeakNetBatchPanels", first_image, unit="count")
        self.metrics.gauge("PeakNetPeaksPerFrame", peaks_total / max(frames_total, 1), unit="count")
        if nonfinite:
            self.metrics.count("PeakNetNonFinitePixels", nonfinite)
        if capped_frames:
            self.metrics.count("PeakNetCappedFrames", capped_frames)
            self.metrics.count("PeakNetCappedPanels", int(capped.sum()))
        if self.device.type == "cuda":
            self.metrics.gauge(
                "PeakNetGpuMemoryAllocatedMB", torch.cuda.memory_allocated(self.device) / 2**20, unit="MB"
            )
            self.metrics.gauge("PeakNetGpuMemoryReservedMB", torch.cuda.memory_reserved(self.device) / 2**20, unit="MB")
        return answers

    def _success(self, member: Decoded, frames: list[dict], threshold: float | None) -> Answer:
        shape = tuple(int(s) for s in member.frames.array.shape)
        masks = mask_label(member.frames.good_pixels is not None, self.good_pixels is not None)
        if member.oip is not None:
            encoded = oip_response(
                peak_outputs(frames),
                member.oip.outputs,
                model_name=self.model_name,
                model_version=self.model_version,
                request_id=member.oip.id,
                parameters={
                    "model": self.settings.model_label,
                    "precision": dtype_name(self.dtype),
                    "device": str(self.device),
                    "shape": list(shape),
                    "bad_pixel_mask": masks,
                },
            )
            headers = (
                {} if encoded.header_length is None else {"Inference-Header-Content-Length": str(encoded.header_length)}
            )
            return Answer(200, encoded.body, encoded.content_type, headers)
        if member.cxi:
            body = cxi_response(
                frames, shape, max_peaks=self.settings.max_peaks_per_frame, attrs={"bad_pixel_mask": masks}
            )
            return Answer(200, body, "application/x-hdf5")
        return Answer(
            200,
            json_response(
                model=self.settings.model_label,
                precision=dtype_name(self.dtype),
                device=str(self.device),
                shape=shape,
                dtype=member.frames.dtype_name,
                frames=frames,
                extra={"threshold": threshold, "bad_pixel_mask": masks},
            ),
        )

    @staticmethod
    def _respond(context: Any, idx: int, answer: Answer) -> Any:
        context.set_response_status(answer.status, HTTP_PHRASES.get(answer.status, ""), idx)
        context.set_response_content_type(idx, answer.content_type)
        for name, value in answer.headers.items():
            context.set_response_header(idx, name, value)
        if isinstance(answer.body, (bytes, bytearray)):
            return bytes(answer.body)
        body = json.dumps(answer.body)
        if answer.status == 500:  # told apart from the frontend's 500 "Worker died." by the proxy
            context.set_response_header(idx, ERROR_BODY_HEADER, body)
        return body
