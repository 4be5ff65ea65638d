"""The retry policy as pure decisions, and its loop with the clock and the wait injected (no sleeping).

The bridge's defaults and the client's :data:`CLIENT_POLICY` are both pinned here; the loop against
real sockets is tested in tests/bridge/test_sender.py and tests/clients/test_client.py.
"""

from __future__ import annotations

import json
import math

import pytest
import requests

from peaknet_serve.clients.retry import (
    CLIENT_POLICY,
    Decision,
    GaveUp,
    RetryPolicy,
    failure_reason,
    is_worker_death,
    post_with_retries,
)
from peaknet_serve.errors import proxy_errors

BRIDGE = RetryPolicy()
WORKER_DIED_503 = next(e for e in proxy_errors(1, 1, 1) if e.type == "worker_died").to_json()
TOKEN_TEXT = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"


def answer(status: int, text: str = "") -> requests.Response:
    """A real :class:`requests.Response` carrying ``status`` and ``text``, as requests builds one."""
    response = requests.Response()
    response.status_code, response._content, response.encoding = status, text.encode(), "utf-8"
    return response


class Clock:
    """A monotonic clock that only the injected wait moves; ``waits`` records each wait."""

    def __init__(self, stop_after: int | None = None):
        self.now, self.waits, self.stop_after = 100.0, [], stop_after

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return self.stop_after is not None and len(self.waits) >= self.stop_after


def scripted(*outcomes):
    """``post()`` that returns (or raises) the given outcomes in turn; ``post.calls`` counts them."""
    queue = list(outcomes)

    def post() -> requests.Response:
        post.calls += 1
        outcome = queue.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    post.calls = 0
    return post


# ---------------------------------------------------------------------------- what is retried


@pytest.mark.parametrize(
    "status, text, key_file, bridge, client",
    [
        (None, "", False, True, True),
        (503, "Model peaknet has no worker to serve inference request", False, True, True),
        (502, "", False, True, False),
        (504, "", False, True, False),
        (429, "", False, True, False),
        (400, '{"error": "X-Shape 1,2,3 does not match 10 bytes"}', False, False, False),
        (413, "", False, False, False),
        (500, "internal error", False, False, False),
        (400, TOKEN_TEXT, False, False, False),
        (400, TOKEN_TEXT, True, True, False),
        (401, "Token Authorization failed", True, True, False),
        (403, "Token Authorization failed", True, True, False),
        (404, "Token Authorization failed", True, False, False),
    ],
)
def test_what_counts_as_unavailable(status, text, key_file, bridge, client):
    assert BRIDGE.is_unavailable(status, text, key_file) is bridge
    assert CLIENT_POLICY.is_unavailable(status, text, key_file) is client


def test_backoff_doubles_up_to_its_cap():
    policy = RetryPolicy(retry_for_s=60, first_backoff_s=0.25, max_backoff_s=2.0)
    assert [policy.delay(i) for i in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [BRIDGE.delay(i) for i in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert [CLIENT_POLICY.delay(i) for i in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert BRIDGE.delay(5000) == 5.0


# ---------------------------------------------------------------------------- budgets and limits


def decide(policy: RetryPolicy, status=None, text="", *, attempts=1, elapsed_s=0.0, worker_deaths=0, key_file=False):
    return policy.decide(
        status, text, attempts=attempts, elapsed_s=elapsed_s, worker_deaths=worker_deaths, key_file_in_use=key_file
    )


def test_the_time_budget_counts_the_wait_that_would_follow():
    policy = RetryPolicy(retry_for_s=1.0, first_backoff_s=0.5, max_backoff_s=0.5)
    assert decide(policy, 503, attempts=2, elapsed_s=0.5) == Decision(0.5, "retry")
    assert decide(policy, 503, attempts=3, elapsed_s=0.75) == Decision(None, "exhausted")
    assert decide(RetryPolicy(retry_for_s=0.0)) == Decision(None, "exhausted")
    assert decide(BRIDGE, attempts=1000, elapsed_s=294.9) == Decision(5.0, "retry")
    assert decide(BRIDGE, attempts=1000, elapsed_s=295.1) == Decision(None, "exhausted")


def test_the_client_counts_retries_and_has_no_time_budget():
    assert CLIENT_POLICY.retry_for_s == math.inf and CLIENT_POLICY.max_retries == 4
    for attempts in range(1, 5):
        assert decide(CLIENT_POLICY, 503, attempts=attempts, elapsed_s=1e9) == Decision(
            CLIENT_POLICY.delay(attempts - 1), "retry"
        )
    assert decide(CLIENT_POLICY, 503, attempts=5) == Decision(None, "exhausted")
    assert decide(RetryPolicy(max_retries=0)) == Decision(None, "exhausted")


def test_worker_deaths_are_retried_a_limited_number_of_times():
    died = (500, "Worker died.")
    assert decide(BRIDGE, *died, worker_deaths=1) == Decision(0.25, "retry")
    assert decide(BRIDGE, *died, attempts=5, worker_deaths=2) == Decision(BRIDGE.delay(4), "retry")
    assert decide(BRIDGE, *died, attempts=6, worker_deaths=3) == Decision(None, "final")
    assert decide(RetryPolicy(retry_for_s=0.0), *died, worker_deaths=1) == Decision(None, "exhausted")
    assert decide(CLIENT_POLICY, *died, worker_deaths=1) == Decision(None, "final")
    # the same deaths through the reverse proxy (its JSON 503) and as TorchServe's 507
    proxied = (503, json.dumps(WORKER_DIED_503))
    assert decide(BRIDGE, *proxied, attempts=6, worker_deaths=3) == Decision(None, "final")
    assert decide(CLIENT_POLICY, *proxied, worker_deaths=1) == Decision(None, "final")
    assert decide(BRIDGE, 507, '{"code": 507, "message": "Worker died."}', attempts=6, worker_deaths=3) == Decision(
        None, "final"
    )


def test_worker_deaths_are_told_from_other_answers_of_the_same_status():
    assert is_worker_death(503, json.dumps(WORKER_DIED_503)) and is_worker_death(507, "Worker died.")
    busy = {"error": {"type": "busy", "message": "retry", "status": 503}}
    assert not is_worker_death(503, json.dumps(busy)) and not is_worker_death(503, "Worker died.")
    assert not is_worker_death(503, "not json") and not is_worker_death(503, "[1]")
    assert not is_worker_death(500, json.dumps({"error": {"type": "internal_error"}}))


def test_a_final_answer_is_not_retried_whatever_the_budget():
    assert decide(BRIDGE, 400, "bad shape") == Decision(None, "final")
    assert decide(BRIDGE, 401, TOKEN_TEXT) == Decision(None, "final")
    assert decide(BRIDGE, 401, TOKEN_TEXT, key_file=True) == Decision(0.25, "retry")
    assert decide(CLIENT_POLICY, 401, TOKEN_TEXT, key_file=True) == Decision(None, "final")


def test_failure_reasons():
    assert failure_reason(None, "", requests.ConnectionError("refused")) == "no answer: ConnectionError"
    assert failure_reason(503, "busy", None) == "HTTP 503"
    assert failure_reason(500, "Worker died.", None) == "HTTP 500 worker died"


# ---------------------------------------------------------------------------- the loop


def test_the_loop_waits_the_policys_delays_until_an_answer():
    clock, reasons = Clock(), []
    post = scripted(requests.ConnectionError("refused"), answer(503, "busy"), answer(500, "Worker died."), answer(200))
    got, attempts = post_with_retries(post, BRIDGE, wait=clock.wait, clock=clock, on_retry=reasons.append)
    assert got.status_code == 200 and attempts == post.calls == 4
    assert clock.waits == [0.25, 0.5, 1.0]
    assert reasons == ["no answer: ConnectionError", "HTTP 503", "HTTP 500 worker died"]


def test_the_loop_gives_up_when_the_budget_is_spent():
    clock = Clock()
    post = scripted(*[requests.ConnectionError("refused")] * 100)
    with pytest.raises(GaveUp) as failure:
        post_with_retries(post, RetryPolicy(retry_for_s=10.0), wait=clock.wait, clock=clock)
    assert failure.value.why == "exhausted" and failure.value.answer is None
    assert isinstance(failure.value.error, requests.ConnectionError)
    assert clock.waits == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert failure.value.attempts == 6 and failure.value.elapsed_s == sum(clock.waits)


def test_the_loop_counts_worker_deaths_across_attempts():
    clock = Clock()
    post = scripted(*[answer(500, "Worker died.")] * 4)
    with pytest.raises(GaveUp) as failure:
        post_with_retries(post, BRIDGE, wait=clock.wait, clock=clock)
    assert failure.value.why == "final" and failure.value.attempts == 3 and len(clock.waits) == 2
    assert failure.value.answer.text == "Worker died."


def test_the_loop_stops_when_the_wait_says_so():
    clock = Clock(stop_after=2)
    post = scripted(*[answer(503)] * 10)
    with pytest.raises(GaveUp) as failure:
        post_with_retries(post, BRIDGE, wait=clock.wait, clock=clock)
    assert failure.value.why == "stopped" and failure.value.attempts == post.calls == 2


def test_the_client_policy_gives_up_after_its_retries():
    clock = Clock()
    post = scripted(*[answer(503, "queue full")] * 10)
    with pytest.raises(GaveUp) as failure:
        post_with_retries(post, CLIENT_POLICY, wait=clock.wait, clock=clock)
    assert failure.value.why == "exhausted" and failure.value.attempts == post.calls == 5
    assert clock.waits == [0.5, 1.0, 2.0, 4.0]
    assert failure.value.answer.status_code == 503


def test_a_final_answer_ends_the_loop_at_once():
    clock = Clock()
    post = scripted(answer(400, "bad shape"))
    with pytest.raises(GaveUp) as failure:
        post_with_retries(post, BRIDGE, key_file_in_use=True, wait=clock.wait, clock=clock)
    assert failure.value.why == "final" and failure.value.attempts == 1 and clock.waits == []
    assert failure.value.answer.text == "bad shape"
