"""PeakNetHandler's refusals decided before inference, through TorchServe's own Context: the work budget
(413/503 with Retry-After), Accept negotiation (406) and conflicting headers (bad_option)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from peaknet_serve.decode.request import DecodedFrames
from peaknet_serve.pipeline import calibrate_budget, repeated_seconds, warmed_shapes
from peaknet_serve.serve.budget import WorkBudget, calibration_shapes
from peaknet_serve.serve.handler import PeakNetHandler, batch_parts
from peaknet_serve.serve.http import Decoded
from tests.serve.test_handler import make_context, make_frames, raw_request, run_batch


@pytest.fixture(scope="module")
def handler(model_dir) -> PeakNetHandler:
    h = PeakNetHandler()
    h.initialize(make_context(model_dir))
    return h


def error(body: str) -> str:
    return json.loads(body)["error"]["type"]


def test_the_handler_calibrates_its_budget_at_start_up(handler):  # runs first: the others replace the budget
    assert handler.budget.enabled and handler.budget.seconds_per_pixel > 0 and handler.budget.overhead_s >= 0
    assert handler.budget.response_timeout_s == 120.0 and handler.budget.budget_s == 60.0


def test_calibration_times_each_batch_a_few_times_unless_it_is_long():
    durations = iter([0.2, 0.3, 0.1, 0.4])
    assert repeated_seconds(lambda: next(durations), 3, 1.0) == [0.2, 0.3, 0.1]
    durations = iter([0.7, 0.6, 0.5])
    assert repeated_seconds(lambda: next(durations), 3, 1.0) == [0.7, 0.6]  # 1.3 s: enough
    assert repeated_seconds(lambda: 5.0, 3, 1.0) == [5.0]


def test_calibration_runs_a_shape_that_warm_up_did_not_run_once_untimed(handler, monkeypatch):
    settings = handler.settings
    shapes = calibration_shapes(settings.warmup_shapes, settings.max_batch_panels)
    warmed = warmed_shapes(handler.finder, settings)
    assert (1, 64, 96) in warmed and any(shape not in warmed for shape in shapes)
    seen = []
    find = handler.finder.find
    monkeypatch.setattr(handler.finder, "find", lambda panels: seen.append(tuple(panels.shape)) or find(panels))
    timed = calibrate_budget(WorkBudget(), handler.finder, settings, repeats=1)
    assert [shape for shape, _ in timed] == shapes
    assert seen == [s for shape in shapes for s in ([shape] if shape in warmed else [shape, shape])]


def test_batch_mates_past_the_budget_are_503_with_retry_after(handler, model_dir):
    frames = make_frames(n=2)
    # one request's pixels cost 4 s of a 5 s budget: the first runs, the next two wait
    handler.budget = WorkBudget(10.0, 0.5, seconds_per_pixel=4.0 / frames.size)
    context = make_context(model_dir)
    statuses, bodies, _ = run_batch(handler, context, [raw_request(frames)] * 3)
    assert statuses == [200, 503, 503]
    assert error(bodies[1]) == "busy" and context.get_response_headers(1)["Retry-After"] == "5"
    assert json.loads(bodies[0])["shape"] == list(frames.shape)
    assert handler.budget.load != 1.0  # the batch that ran was measured


def test_a_request_over_the_budget_alone_is_413_and_says_what_fits(handler, model_dir):
    frames = make_frames(n=2)
    handler.budget = WorkBudget(10.0, 0.5, seconds_per_pixel=6.0 / frames.size)  # 6 s alone, 5 s budget
    statuses, bodies, _ = run_batch(handler, make_context(model_dir), [raw_request(frames)])
    assert statuses == [413] and error(bodies[0]) == "too_large"
    assert "at most 1 frame(s)" in json.loads(bodies[0])["error"]["message"]


def test_admission_off_runs_everything(handler, model_dir):
    frames = make_frames(n=2)
    handler.budget = WorkBudget(10.0, 0.0, seconds_per_pixel=100.0 / frames.size)
    statuses, _, _ = run_batch(handler, make_context(model_dir), [raw_request(frames)] * 2)
    assert statuses == [200, 200]


def test_not_acceptable_and_conflicting_headers_fail_only_their_own_request(handler, model_dir):
    frames = make_frames(n=1)
    row, headers = raw_request(frames)
    statuses, bodies, types = run_batch(
        handler,
        make_context(model_dir),
        [
            (row, {**headers, "Accept": "image/png"}),
            (row, {**headers, "x-dtype": "float32"}),  # X-Dtype: uint16 and x-dtype: float32
            (row, {**headers, "Accept": "application/x-hdf5;q=0, application/json"}),
            (row, {**headers, "Accept": "application/x-hdf5"}),
        ],
    )
    assert statuses == [406, 400, 200, 200]
    assert error(bodies[0]) == "not_acceptable" and error(bodies[1]) == "bad_option"
    assert types[2] == "application/json" and types[3] == "application/x-hdf5"


def decoded(idx: int, n: int, p: int) -> Decoded:
    return Decoded(idx, DecodedFrames(np.zeros((n, p, 4, 4), np.uint16), "raw"), cxi=False)


def test_batch_parts_hold_at_least_one_micro_batch_each():
    members = [decoded(0, 1, 16), decoded(1, 3, 16), decoded(2, 1, 16), decoded(3, 2, 16), decoded(4, 1, 16)]
    parts = batch_parts(members, 64)
    assert [[m.idx for m in part] for part in parts] == [[0, 1], [2, 3, 4]]
    assert [[m.idx for m in part] for part in batch_parts(members[:2], 64)] == [[0, 1]]  # 64 panels: one part
    assert [[m.idx for m in part] for part in batch_parts(members, 16)] == [[0], [1], [2], [3], [4]]
    assert batch_parts([], 64) == []


def test_a_batch_slower_than_admission_estimated_is_cut_short_not_run_past_the_timeout(model_dir):
    frames = make_frames(n=4)
    h = PeakNetHandler()
    # one request per part; admission believes each costs 0.1 ms of a 0.5 ms budget (responseTimeout 1 ms),
    # far below what the CPU takes: the first part runs, then the 0.8 ms deadline has passed
    h.initialize(make_context(model_dir, {"max_batch_panels": frames.shape[0] * frames.shape[1]}))
    h.budget = WorkBudget(1e-3, 0.5, seconds_per_pixel=1e-4 / frames.size)
    context = make_context(model_dir)
    statuses, bodies, _ = run_batch(h, context, [raw_request(frames)] * 3)
    assert statuses == [200, 503, 503]
    assert all(error(b) == "busy" and "slower than estimated" in json.loads(b)["error"]["message"] for b in bodies[1:])
    assert context.get_response_headers(1)["Retry-After"] == "1"
    assert json.loads(bodies[0])["shape"] == list(frames.shape)
    assert h.budget.load > 1.0  # the part that ran was measured, and slower than estimated
