"""One pipeline builder: checkpoint -> network in its serving mode -> a warmed-up peak finder.

The TorchServe handler, the benchmarks and the evaluation all build what they run here, so what is
measured and scored is what is served::

    settings = HandlerSettings.from_mapping(yaml_config["handler"])
    pipeline = build_finder(settings, torch.device("cuda", 0), model_dir)
    result = pipeline.finder.find(panels)        # (B, H, W) wire-dtype panels on the device

Steps, in order: load and cast the weights (:func:`load_network`), lay them out, wrap the forward in
``torch.compile`` (:func:`network_forward`), build the :class:`~peaknet_serve.device.finder.PanelPeakFinder`,
tune the depthwise-conv padding at every warm-up shape (before the first compiled run: a compiled graph
keeps the padding it was traced with), then warm up every micro-batch bucket. The compiled network's
backend is ``compile_backend`` resolved for the device (:mod:`peaknet_serve.config.backend`); with
``aoti`` the tuned network is exported per bucket into AOTInductor packages
(:mod:`peaknet_serve.device.aot_packages`), or the packages a former start built are loaded, and the
finder calls them instead of the ``torch.compile`` forward. The handler's work budget is calibrated
on the warmed-up finder here too (:func:`calibrate_budget`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from peaknet_serve.checkpoint import ConfigSource, load_peaknet
from peaknet_serve.config.backend import BackendChoice, resolve_compile_backend
from peaknet_serve.config.mode import ServingMode
from peaknet_serve.config.settings import HandlerSettings
from peaknet_serve.device.aot_packages import AotPackages, PackagedForward, ScoreModule, serving_packages
from peaknet_serve.device.compile_cache import apply_padding, cache_directory, padding_of, serving_cache
from peaknet_serve.device.finder import PanelPeakFinder
from peaknet_serve.device.peaks import LabelLimits
from peaknet_serve.model.bifpn import merge_separable_convs
from peaknet_serve.model.depthwise import PaddingChoice
from peaknet_serve.model.peaknet import PeakNet
from peaknet_serve.serve.budget import Shape, WorkBudget, calibration_shapes

log = logging.getLogger(__name__)


@dataclass
class Pipeline:
    """What :func:`build_finder` built.

    Attributes:
        model: the eval-mode network, weights in ``mode.dtype`` on the finder's device.
        finder: runs the network over (B, H, W) panels and extracts peaks.
        mode: how the network runs.
        depthwise_choices: the padding tuner's measurement for each depthwise-conv input size.
        startup_s: seconds from the start of loading to the end of warm-up.
        phases: ``load``, ``tune`` and ``warm-up`` seconds of ``startup_s`` (``tune`` includes waiting
            for the compile cache's lock while another worker builds it, and with AOT packages
            building them, waiting for other workers' builds, loading them and their first calls).
        compile_cache: ``off`` (nothing compiled, or the cache is off), ``hit`` (artefacts loaded) or
            ``built`` (this process compiled and saved them); with the ``aoti`` backend, ``aot_hit``
            (every bucket's AOTInductor package loaded), ``aot_built`` (some built here) or
            ``aot_fallback`` (some bucket runs under torch.compile, through the compile cache: its
            package failed to build or to load).
        packages: per AOTInductor package, its input ``shape``, ``source`` (found, built here, or
            waited for while another worker built it), ``built_by`` (the builder's process id) and
            ``build_s``, ``wait_s``, ``load_s`` and ``first_call_s`` seconds
            (:meth:`~peaknet_serve.device.aot_packages.AotPackages.prepare`).
        backend: which backend compiled the network and why (``compile_backend`` resolved for the
            device); None when the network runs eager.
    """

    model: PeakNet
    finder: PanelPeakFinder
    mode: ServingMode
    depthwise_choices: list[PaddingChoice] = field(default_factory=list)
    startup_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    compile_cache: str = "off"
    packages: list[dict] = field(default_factory=list)
    backend: BackendChoice | None = None

    @property
    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])


def load_network(
    config: ConfigSource,
    weights: str | Path | None,
    mode: ServingMode,
    device: torch.device,
    *,
    random_init: bool = False,
) -> PeakNet:
    """The checkpoint's network in eval mode, weights in ``mode.dtype`` and memory format on ``device``,
    its separable convs merged when ``mode.merge_separable``."""
    model = load_peaknet(config, weights, dtype=mode.dtype, device=device, random_init=random_init)
    if mode.merge_separable:
        merge_separable_convs(model)
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def network_forward(model: PeakNet, mode: ServingMode, head: str = "score") -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward the finder calls: ``head="score"`` is the (B, 1, H, W) peak score
    (:meth:`PeakNet.forward_peak_score`), ``"logits"`` the full (B, 2, H, W) logits; compiled in
    ``mode.compile`` with static shapes when that is set."""
    forward = {"score": model.forward_peak_score, "logits": model.forward}[head]
    if mode.compile:
        forward = torch.compile(forward, mode=mode.compile, dynamic=False)
    return forward


def use_packages(
    packages: AotPackages,
    finder: PanelPeakFinder,
    mode: ServingMode,
    warmup_shapes: tuple[tuple[int, int, int], ...],
    tune: Callable[[], object],
) -> tuple[str, list[dict]]:
    """Make ``finder`` run its network through AOTInductor packages, one per (bucket, H, W) of
    ``warmup_shapes`` (loaded, or tuned by ``tune`` and built), and through its ``torch.compile``
    forward for any other input. Returns :meth:`AotPackages.prepare`'s outcome and timings."""
    examples = [
        finder.network_example(size, height, width)
        for panels, height, width in warmup_shapes
        for size in finder.warmup_sizes(panels)
    ]
    module = ScoreModule(finder.model, mode.autocast, finder.device.type)
    runners, outcome, timings = packages.prepare(module, examples, tune)
    finder.set_forward(PackagedForward(runners, fallback=finder.forward))
    return outcome, timings


def build_finder(
    settings: HandlerSettings,
    device: torch.device,
    model_dir: Path = Path("."),
    *,
    mode: ServingMode | None = None,
    random_init: bool = False,
) -> Pipeline:
    """Load, cast, compile, tune and warm up the network as ``settings`` say, on ``device``.

    Args:
        settings: the handler settings (paths relative to ``model_dir``, batching, peak extraction,
            warm-up shapes).
        device: where the network runs.
        model_dir: the folder relative paths of ``settings.config``/``settings.weights`` start from.
        mode: overrides :meth:`ServingMode.from_settings` (benchmarks compare modes this way).
        random_init: random weights instead of the checkpoint's (benchmarks of public configs).
    """
    started = time.perf_counter()
    mode = mode or ServingMode.from_settings(settings, device)
    model = load_network(
        settings.resolve_path(settings.config, model_dir),
        settings.resolve_path(settings.weights, model_dir),
        mode,
        device,
        random_init=random_init,
    )
    finder = PanelPeakFinder(
        model,
        dtype=mode.dtype,
        device=device,
        max_batch_panels=settings.max_batch_panels,
        threshold=settings.threshold,
        min_peak_pixels=settings.min_peak_pixels,
        buckets=settings.buckets() if mode.compile else (),
        channels_last=mode.channels_last,
        autocast=mode.autocast is not None,
        forward=network_forward(model, mode),
        label_limits=LabelLimits(settings.max_mask_fraction, settings.max_label_iterations),
        blocking_wait=settings.gpu_wait == "block",
    )
    loaded = time.perf_counter()
    choices: list[PaddingChoice] = []

    def tune() -> None:
        for panels, height, width in settings.warmup_shapes if mode.depthwise_padding else ():
            for choice in finder.tune_depthwise(panels, height, width):
                choices.append(choice)
                log.info(
                    "depthwise conv %s x%d: %.3f ms as is; %s",
                    choice.input_shape,
                    choice.modules,
                    choice.plain_ms,
                    "kept"
                    if choice.compute_size is None
                    else f"computed at {choice.compute_size}: {choice.chosen_ms:.3f} ms",
                )

    backend = None
    if mode.compile is not None:
        backend = resolve_compile_backend(
            settings.compile_backend,
            device,
            compile_cache=settings.compile_cache,
            cache_dir=cache_directory(settings) if settings.compile_cache else None,
        )
        log.info("compile backend: %s", backend.describe())
    packages = serving_packages(settings, mode, model, device, backend)
    package_timings: list[dict] = []
    outcome = None
    if packages is not None:
        outcome, package_timings = use_packages(packages, finder, mode, settings.warmup_shapes, tune)
    if outcome in ("aot_hit", "aot_built"):
        tuned = time.perf_counter()
        if settings.warmup:
            for panels, height, width in settings.warmup_shapes:
                finder.warmup(panels, height, width)
    else:  # torch.compile, for every bucket or for those without a package, through the compile cache
        cache = serving_cache(settings, mode, model, device)
        with cache.compiling() if cache is not None else contextlib.nullcontext(False) as cache_hit:
            tuning = cache.load_tuning() if cache_hit else None
            if tuning is not None:  # the padding the cached graphs were traced with
                apply_padding(model, tuning["depthwise_padding"])
            else:
                if outcome is None:  # with packages, the padding is tuned (or read) already
                    tune()
                if cache is not None and mode.depthwise_padding:
                    cache.save_tuning({"depthwise_padding": padding_of(model)})
            tuned = time.perf_counter()
            if settings.warmup:
                for panels, height, width in settings.warmup_shapes:
                    finder.warmup(panels, height, width)
        cache_outcome = "off" if cache is None else "hit" if cache_hit else "built"
        if outcome is None:
            outcome = cache_outcome
        else:
            log.info("AOT packages missing for some buckets: torch.compile runs them, compile cache %s", cache_outcome)
    warmed = time.perf_counter()
    return Pipeline(
        model,
        finder,
        mode,
        choices,
        warmed - started,
        phases={"load": loaded - started, "tune": tuned - loaded, "warm-up": warmed - tuned},
        compile_cache=outcome,
        packages=package_timings,
        backend=backend,
    )


def batch_seconds(finder: PanelPeakFinder, shape: Shape) -> float:
    """Wall seconds of one :meth:`~PanelPeakFinder.find` of a zero uint16 ``(panels, H, W)`` batch on the
    finder's device, peak table copied to the host (so that a GPU's work is included)."""
    panels = torch.zeros(shape, dtype=torch.uint16, device=finder.device)
    started = time.perf_counter()
    finder.find(panels).table.to_host()
    return time.perf_counter() - started


def repeated_seconds(run: Callable[[], float], repeats: int, enough_s: float) -> list[float]:
    """Seconds of calls of ``run`` (which returns the seconds it took): ``repeats`` of them, or fewer
    once they add up to ``enough_s`` (a long run is not repeated: one sample of it is noisy only
    relative to short spikes, which repeats would filter)."""
    samples = [run()]
    while len(samples) < repeats and sum(samples) < enough_s:
        samples.append(run())
    return samples


def warmed_shapes(finder: PanelPeakFinder, settings: HandlerSettings) -> set[Shape]:
    """The (panels, H, W) batches the start-up warm-up ran through ``finder`` (none when it is off)."""
    if not settings.warmup:
        return set()
    return {
        (size, height, width)
        for panels, height, width in settings.warmup_shapes
        for size in finder.warmup_sizes(panels)
    }


def calibrate_budget(
    budget: WorkBudget, finder: PanelPeakFinder, settings: HandlerSettings, repeats: int = 3, enough_s: float = 1.0
) -> list[tuple[Shape, float]]:
    """Fit ``budget``'s fixed and per-pixel costs on the warmed-up ``finder``: each batch of
    :func:`~peaknet_serve.serve.budget.calibration_shapes` (from ``settings.warmup_shapes`` and
    ``settings.max_batch_panels``) timed up to ``repeats`` times (:func:`repeated_seconds`), the
    medians fitted with :meth:`WorkBudget.calibrate`; a batch shape that warm-up did not run
    (:func:`warmed_shapes`) runs once untimed first.

    Returns:
        ``[(shape, median seconds), ...]``, what was measured (ascending in pixels).
    """
    warmed = warmed_shapes(finder, settings)
    timed = []
    for shape in calibration_shapes(settings.warmup_shapes, settings.max_batch_panels):
        if shape not in warmed:  # a shape's first batch pays one-time costs (cuDNN's algorithm search ...)
            batch_seconds(finder, shape)
        seconds = repeated_seconds(lambda shape=shape: batch_seconds(finder, shape), repeats, enough_s)
        timed.append((shape, statistics.median(seconds)))
    budget.calibrate([(math.prod(shape), seconds) for shape, seconds in timed])
    return timed
