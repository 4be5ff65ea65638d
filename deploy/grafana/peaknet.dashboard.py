"""Grafana dashboard for peaknet-serve, defined with grafanalib.

Regenerate peaknet.json after editing (tests/deploy/test_monitoring.py checks they agree):

    generate-dashboard -o deploy/grafana/peaknet.json deploy/grafana/peaknet.dashboard.py

Every query reads the metrics a server publishes on :8082/metrics (docs/monitoring.md); ``$instance``
selects servers, ``$datasource`` the Prometheus.
"""

from grafanalib.core import (
    Dashboard,
    GridPos,
    RowPanel,
    Stat,
    Target,
    Template,
    Templating,
    Threshold,
    TimeSeries,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'
RATE = "$__rate_interval"


def target(expr: str, legend: str, ref: str = "A") -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, datasource=DATASOURCE)


def quantiles(metric: str, by: str = "", legend_prefix: str = "") -> list[Target]:
    group = f"le{', ' + by if by else ''}"
    return [
        target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"{legend_prefix}p{int(q * 100)}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
    ]


def stat(title: str, expr: str, unit: str, x: int, thresholds: list[Threshold] | None = None) -> Stat:
    return Stat(
        title=title,
        dataSource=DATASOURCE,
        targets=[target(expr, title)],
        format=unit,
        gridPos=GridPos(h=4, w=6, x=x, y=1),
        reduceCalc="lastNotNull",
        thresholds=thresholds or [Threshold("green", 0, 0.0)],
    )


def series(title: str, targets: list[Target], unit: str, x: int, y: int, description: str = "") -> TimeSeries:
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        unit=unit,
        gridPos=GridPos(h=8, w=12, x=x, y=y),
    )


FRAMES = f"sum(rate(PeakNetFramesServed{{{SEL}}}[{RATE}]))"
HIT_RATE = f"sum(rate(PeakNetHitFrames{{{SEL}}}[{RATE}])) / {FRAMES}"
P99 = f"histogram_quantile(0.99, sum by (le) (rate(PeakNetRequestSeconds_bucket{{{SEL}}}[{RATE}])))"
REQUESTS = f'sum(rate(ts_inference_requests_total{{model_name="peaknet", {SEL}}}[{RATE}]))'
ERRORS_5XX = f"sum(rate(Requests5XX{{{SEL}}}[{RATE}])) / {REQUESTS}"

dashboard = Dashboard(
    title="peaknet-serve",
    uid="peaknet-serve",
    description="PeakNet Bragg-peak finder on TorchServe: throughput, latency, peaks, hits, errors",
    tags=["peaknet", "torchserve"],
    timezone="utc",
    refresh="10s",
    templating=Templating(
        list=[
            Template(name="datasource", label="Prometheus", query="prometheus", type="datasource"),
            Template(
                name="instance",
                label="Server",
                query='label_values(up{job="peaknet"}, instance)',
                dataSource=DATASOURCE,
                includeAll=True,
                multi=True,
                default="$__all",
                refresh=2,
            ),
        ]
    ),
    panels=[
        RowPanel(title="Now", gridPos=GridPos(h=1, w=24, x=0, y=0)),
        stat("Frames / s", FRAMES, "short", 0),
        stat("Hit rate", HIT_RATE, "percentunit", 6),
        stat("p99 handler latency", P99, "s", 12, [Threshold("green", 0, 0.0), Threshold("red", 1, 0.5)]),
        stat("Server errors", ERRORS_5XX, "percentunit", 18, [Threshold("green", 0, 0.0), Threshold("red", 1, 0.01)]),
        RowPanel(title="Latency", gridPos=GridPos(h=1, w=24, x=0, y=5)),
        series(
            "Request latency in the handler",
            quantiles("PeakNetRequestSeconds"),
            "s",
            0,
            6,
            "From the start of the request's batch in the handler to its answer (PeakNetRequestSeconds).",
        ),
        series(
            "Stage latency p99",
            [
                target(
                    f"histogram_quantile(0.99, sum by (le, Stage) (rate(PeakNetStageSeconds_bucket{{{SEL}}}[{RATE}])))",
                    "{{Stage}}",
                )
            ],
            "s",
            12,
            6,
            "Per batch: decode, host-to-device copy, inference, postprocess, whole batch.",
        ),
        series(
            "Queue wait (mean)",
            [
                target(
                    f'sum(rate(ts_queue_latency_microseconds{{model_name="peaknet", {SEL}}}[{RATE}])) / 1e6 / {REQUESTS}',
                    "queue",
                )
            ],
            "s",
            0,
            14,
            "Mean time requests wait in TorchServe's queue: rising means falling behind.",
        ),
        series(
            "Batch size",
            [
                target(
                    f"sum(rate(PeakNetFramesServed{{{SEL}}}[{RATE}])) / sum(rate(PeakNetBatches{{{SEL}}}[{RATE}]))",
                    "frames per batch",
                ),
            ],
            "short",
            12,
            14,
        ),
        RowPanel(title="Throughput and peaks", gridPos=GridPos(h=1, w=24, x=0, y=22)),
        series("Throughput", [target(FRAMES, "frames / s"), target(REQUESTS, "requests / s", "B")], "short", 0, 23),
        series(
            "Peaks per frame",
            [
                *quantiles("PeakNetFramePeaks"),
                target(f"sum(rate(PeakNetPeaksFound{{{SEL}}}[{RATE}])) / {FRAMES}", "mean", "D"),
            ],
            "short",
            12,
            23,
        ),
        series("Hit rate", [target(HIT_RATE, "frames with >= MinPeaks peaks")], "percentunit", 0, 31),
        series(
            "Errors",
            [
                target(f"sum by (ErrorType) (rate(PeakNetBadRequests{{{SEL}}}[{RATE}]))", "4xx {{ErrorType}}"),
                target(f"sum(rate(Requests5XX{{{SEL}}}[{RATE}]))", "5xx (all)", "B"),
            ],
            "reqps",
            12,
            31,
        ),
        series(
            "GPU memory per worker",
            [
                target(f"max by (instance) (PeakNetGpuMemoryReservedMB{{{SEL}}})", "reserved {{instance}}"),
                target(f"max by (instance) (PeakNetGpuMemoryAllocatedMB{{{SEL}}})", "allocated {{instance}}", "B"),
            ],
            "decmbytes",
            0,
            39,
        ),
    ],
).auto_panel_ids()
