"""Load test for the PeakNet server with real detector payloads.

Two ways to drive the server:

* **closed loop** (``--concurrency N``): N clients, each sending its next request as soon as the
  last one is answered. Measures the server's capacity.
* **open loop** (``--rate HZ``): requests leave on a fixed schedule (a detector at 120 Hz does not
  wait for the server). Reports lag against the schedule and says when the server falls behind:
  sends that start late, or sends dropped because ``--max-in-flight`` requests are unanswered.

A warm-up (``--warmup`` seconds) runs first and is left out of every number. The run stops by
itself after ``--duration`` seconds or ``--requests`` requests. Every answer is checked (status,
JSON schema, frame count). The result is printed, written as JSON (``--report``) and plotted
(``--plot``), and ``--fail-on "p99_ms>250,error_rate>0.01,fps<100"`` turns a bad run into a
non-zero exit for CI.

At hundreds of multi-megabyte requests per second one Python process can be what limits the
measured rate. ``--processes N`` spreads the load (the clients, or the open-loop schedule) over N
forked client processes that share the payloads and the time origin, and merges their samples
into one report.

    peaknet-loadtest --geometry epix10k2m --dtype uint16 --concurrency 4 --duration 30
    peaknet-loadtest --rate 120 --frames-per-request 1 --duration 60 --plot run.png
    peaknet-loadtest --input run42.cxi --encoding hdf5-bslz4 --requests 500
    peaknet-loadtest --concurrency 32 --processes 4 --duration 30
"""

from peaknet_serve.clients.loadtest.cli import build_payloads, check_ready, main, measure, parse_args  # noqa: F401
from peaknet_serve.clients.loadtest.constants import (  # noqa: F401
    EXIT_CLIENT_DIED,
    EXIT_NOTHING_MEASURED,
    EXIT_OK,
    EXIT_THRESHOLDS,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    MAX_POOL_BYTES,
    SIGNAL_CHECK_S,
)
from peaknet_serve.clients.loadtest.loops import Recorder, Target, run_closed_loop, run_open_loop  # noqa: F401
from peaknet_serve.clients.loadtest.plan import RunPlan, ctrl_c_calls, late_threshold_s, send_schedule  # noqa: F401
from peaknet_serve.clients.loadtest.processes import (  # noqa: F401
    Share,
    TallyRecorder,
    client_process,
    first_measured_slot,
    gather,
    measure_in_processes,
    run_share,
    split_count,
    split_load,
)
from peaknet_serve.clients.loadtest.report import (  # noqa: F401
    format_report,
    progress_line,
    save_plot,
    tally_progress,
    watch_progress,
)
from peaknet_serve.clients.loadtest.request import Sample, answer_error, post_request  # noqa: F401
from peaknet_serve.clients.loadtest.stats import (  # noqa: F401
    FAIL_ON_METRICS,
    OPEN_LOOP_METRICS,
    Threshold,
    error_kind,
    flat_metrics,
    latency_stats,
    open_loop_stats,
    parse_fail_on,
    summarize,
    violated,
)
