"""When a failed request is sent again, and after how long: one policy for every HTTP client.

A failed attempt is either *no answer* (connection refused or reset, a timeout), an HTTP status in
``retry_statuses`` (the server is busy or restarting), a rejected token while the key comes from a
key file that a restarted TorchServe rewrites, a "Worker died." (the batch's worker was killed:
TorchServe's 500 or 507, the reverse proxy's 503 ``worker_died``), or a final answer. All but the last are retried with back-off doubling from
``first_backoff_s`` to ``max_backoff_s``, until the time budget ``retry_for_s`` (counted from the
request's first failure) or the ``max_retries`` further attempts are spent; "Worker died." answers
only ``worker_died_retries`` times, since a request that itself kills its worker would do so again.

The two callers keep their own parameters of the one policy:

* the ZMQ bridge (:class:`peaknet_serve.bridge.sender.PeakServer`) rides out restarts in a long
  stream: the defaults of :class:`RetryPolicy` (429/502/503/504 and a rejected key-file token, a
  300 s budget with no limit on the count, back-off 0.25 s to 5 s, two worker deaths);
* :class:`peaknet_serve.clients.client.PeakNetClient` fails fast to an interactive caller:
  :data:`CLIENT_POLICY` (503 only, four further attempts with no time budget, back-off 0.5 s to
  10 s, no worker death and no rejected token retried).

:meth:`RetryPolicy.decide` is a pure function of what happened so far; :func:`post_with_retries`
runs the attempts, with the clock and the wait injected.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

TOKEN_REJECTED = "Token Authorization failed"
WORKER_DIED = "Worker died"
TOKEN_STATUSES = frozenset({400, 401, 403})


@dataclass(frozen=True)
class Decision:
    """What to do after a failed attempt: wait ``delay_s`` and send again, or give up (``delay_s`` None).

    ``why`` is ``"retry"``, ``"final"`` (the answer is not one to retry, or a worker death past
    ``worker_died_retries``: the request itself may kill its worker) or ``"exhausted"`` (the time
    budget or the retry count is spent).
    """

    delay_s: float | None
    why: str


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a failed request is sent again (defaults: the bridge's).

    Args:
        retry_for_s: no retry whose wait would end later than this many seconds after the
            request's first failure (``math.inf``: no time budget; 0: no retry).
        first_backoff_s, max_backoff_s: the wait before retry ``k`` (0-based) is
            ``min(first_backoff_s * 2**k, max_backoff_s)``.
        worker_died_retries: how many 500 "Worker died." answers of one request are retried.
        retry_statuses: HTTP statuses that mean "busy or restarting, try later".
        retry_rejected_token: whether a rejected token (400/401/403 "Token Authorization failed")
            is retried when the key comes from a key file (which is re-read before the retry).
        max_retries: at most this many further attempts (``None``: no limit on the count).
    """

    retry_for_s: float = 300.0
    first_backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    worker_died_retries: int = 2
    retry_statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    retry_rejected_token: bool = True
    max_retries: int | None = None

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based); the exponent is bounded so
        that a long budget of short waits never overflows a float."""
        return min(self.first_backoff_s * 2.0 ** min(retry, 1000), self.max_backoff_s)

    def is_unavailable(self, status: int | None, text: str, key_file_in_use: bool) -> bool:
        """Whether an answer (``status`` None: none came) means "try again later" rather than
        "this request is bad"; a worker death is counted apart (:meth:`decide`)."""
        if status is None or status in self.retry_statuses:
            return True
        return self.retry_rejected_token and key_file_in_use and status in TOKEN_STATUSES and TOKEN_REJECTED in text

    def decide(
        self,
        status: int | None,
        text: str,
        *,
        attempts: int,
        elapsed_s: float,
        worker_deaths: int,
        key_file_in_use: bool = False,
    ) -> Decision:
        """The decision after failed attempt number ``attempts`` (1-based).

        Args:
            status, text: the attempt's HTTP status and body (``None`` and ``""`` without an answer).
            elapsed_s: seconds since the request's first failure (0 at the first).
            worker_deaths: "Worker died." answers of the request so far, this one included.
            key_file_in_use: whether the token comes from a key file.
        """
        died = is_worker_death(status, text)
        if died and worker_deaths > self.worker_died_retries:
            return Decision(None, "final")
        if not died and not self.is_unavailable(status, text, key_file_in_use):
            return Decision(None, "final")
        delay = self.delay(attempts - 1)
        if self.max_retries is not None and attempts > self.max_retries:
            return Decision(None, "exhausted")
        if elapsed_s + delay > self.retry_for_s:
            return Decision(None, "exhausted")
        return Decision(delay, "retry")


CLIENT_POLICY = RetryPolicy(
    retry_for_s=math.inf,
    first_backoff_s=0.5,
    max_backoff_s=10.0,
    worker_died_retries=0,
    retry_statuses=frozenset({503}),
    retry_rejected_token=False,
    max_retries=4,
)


def is_worker_death(status: int | None, text: str) -> bool:
    """The answer to the requests of a batch whose worker was killed: TorchServe's 500 or 507
    "Worker died.", or the reverse proxy's JSON 503 ``worker_died`` that replaces both."""
    if status in (500, 507):
        return WORKER_DIED in text
    if status != 503:
        return False
    try:
        return json.loads(text)["error"]["type"] == "worker_died"
    except (ValueError, KeyError, TypeError):
        return False


def failure_reason(status: int | None, text: str, error: BaseException | None) -> str:
    """A short reason for a failed attempt: ``no answer: ConnectionError``, ``HTTP 503``, ``HTTP 500 worker died``."""
    if status is None:
        return f"no answer: {type(error).__name__}"
    return f"HTTP {status}" + (" worker died" if is_worker_death(status, text) else "")


class GaveUp(Exception):
    """A request that got no 200: the last attempt's ``answer`` (or the ``error`` of getting none).

    ``why`` is :class:`Decision`'s (``"final"``, ``"exhausted"``) or ``"stopped"`` (the wait was
    cut short); ``attempts`` counts the requests sent, ``elapsed_s`` the seconds since the first failure.
    """

    def __init__(
        self,
        why: str,
        reason: str,
        attempts: int,
        elapsed_s: float,
        answer: requests.Response | None,
        error: requests.RequestException | None,
    ):
        super().__init__(f"{why} after {attempts} attempts ({reason})")
        self.why, self.reason, self.attempts, self.elapsed_s = why, reason, attempts, elapsed_s
        self.answer, self.error = answer, error


def post_with_retries(
    post: Callable[[], requests.Response],
    policy: RetryPolicy,
    *,
    key_file_in_use: bool = False,
    wait: Callable[[float], bool | None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[str], None] = lambda reason: None,
) -> tuple[requests.Response, int]:
    """``(answer, attempts)`` of the first attempt answered 200; ``post()`` sends one attempt.

    Args:
        wait: sleeps the given seconds before a retry; a true result gives the request up.
        clock: seconds, monotonic (the time budget's clock).
        on_retry: called with :func:`failure_reason` before each wait.

    Raises:
        GaveUp: the policy gave up, or ``wait`` did.
    """
    attempts, first_failure, worker_deaths = 0, None, 0
    while True:
        attempts += 1
        answer, error = None, None
        try:
            answer = post()
        except requests.RequestException as err:
            error = err
        else:
            if answer.status_code == 200:
                return answer, attempts
        status, text = (None, "") if answer is None else (answer.status_code, answer.text)
        worker_deaths += is_worker_death(status, text)
        now = clock()
        first_failure = now if first_failure is None else first_failure
        elapsed = now - first_failure
        decision = policy.decide(
            status,
            text,
            attempts=attempts,
            elapsed_s=elapsed,
            worker_deaths=worker_deaths,
            key_file_in_use=key_file_in_use,
        )
        reason = failure_reason(status, text, error)
        if decision.delay_s is None:
            raise GaveUp(decision.why, reason, attempts, elapsed, answer, error)
        on_retry(reason)
        if wait(decision.delay_s):
            raise GaveUp("stopped", reason, attempts, elapsed, answer, error)
