"""Training script pieces: the focal loss and a real (tiny, CPU) training run that the server's
loader accepts."""

import json

import pytest
import torch
import torch.nn.functional as F

import peaknet_serve.training.dataset  # noqa: E402
from peaknet_serve.checkpoint import load_peaknet  # noqa: E402
from peaknet_serve.sim.peaksim.coverage import Coverage
from peaknet_serve.training import train
from peaknet_serve.training.dataset import IGNORE_INDEX  # noqa: E402


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    logits = torch.randn(2, 2, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8))
    expected = F.cross_entropy(logits, target)
    assert torch.allclose(train.focal_loss(logits, target, alpha=1.0, gamma=0.0), expected, atol=1e-6)


def test_focal_loss_ignores_weak_pixels_and_down_weights_easy_ones():
    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 0] = 4.0  # confident background everywhere
    target = torch.zeros(1, 4, 4, dtype=torch.uint8)
    target[0, 0, 0] = IGNORE_INDEX
    base = train.focal_loss(logits, target)
    target_wrong = target.clone()
    target_wrong[0, 0, 0] = 1  # the same pixel, now a (missed) peak
    assert train.focal_loss(logits, target_wrong) > 10 * base
    focal = train.focal_loss(logits, torch.zeros_like(target))
    ce = F.cross_entropy(logits, torch.zeros(1, 4, 4, dtype=torch.long))
    assert focal < 0.01 * ce


TINY_RUN = ["--steps", "2", "--crop", "64", "--workers", "0", "--preset", "tiny", "--warmup", "1", "--device", "cpu"]


def tiny_run(out, *options: str) -> dict:
    """A 2-step CPU training run of the tiny preset into ``out`` with ``options``; returns its
    ``train_loss.json``."""
    assert train.main(["--out", str(out), *TINY_RUN, *options]) == 0
    return json.loads((out / "train_loss.json").read_text())


@pytest.fixture
def simulated(monkeypatch):
    """``(keyword arguments, artefacts, has a target)`` of each ``simulate_frame`` call the training's
    crops make (not the frames themselves: they are large)."""
    simulate = peaknet_serve.training.dataset.simulate_frame
    seen = []

    def recording(geometry, rng, *args, **kwargs):
        frame = simulate(geometry, rng, *args, **kwargs)
        seen.append((kwargs, frame.params.artefacts, frame.target is not None))
        return frame

    monkeypatch.setattr(peaknet_serve.training.dataset, "simulate_frame", recording)
    return seen


def test_tiny_training_run_writes_a_loadable_model(tmp_path):
    history = tiny_run(tmp_path, "--batch-size", "2")
    assert history["steps_done"] == 2 and len(history["loss"]) == 2
    assert history["target_ring"] == 1
    assert (tmp_path / "train_loss.png").stat().st_size > 0
    model = load_peaknet(tmp_path / "peaknet.yaml", dtype="float32", device="cpu")
    out = model(torch.randn(1, 1, 64, 96))
    assert out.shape == (1, 2, 64, 96)


def test_tiny_training_run_with_artefacts(tmp_path, simulated):
    """--artefact-probability reaches simulate_frame through SimulatedCrops and is recorded."""
    history = tiny_run(
        tmp_path, "--batch-size", "4", "--crops-per-frame", "1", "--artefact-probability", "0.5", "--target-ring", "0"
    )
    assert history["target_ring"] == 0
    frames = [(kwargs.get("artefact_probability"), artefacts) for kwargs, artefacts, _ in simulated]
    assert history["artefact_probability"] == 0.5 and history["steps_done"] == 2
    assert len(frames) >= 8 and all(p == 0.5 for p, _ in frames)
    assert any(a.any for _, a in frames)
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tmp_path), "--artefact-probability", "1.5"])


def test_training_records_the_default_artefact_probability():
    assert train.parse_args(["--out", "x"]).artefact_probability == 0.0


@pytest.mark.parametrize("ring", ["-1", "4"])
def test_target_ring_outside_0_3_is_refused(ring):
    with pytest.raises(SystemExit):
        train.parse_args(["--out", "x", "--target-ring", ring])


def test_target_ring_default_and_values():
    assert train.parse_args(["--out", "x"]).target_ring == 1
    assert [train.parse_args(["--out", "x", "--target-ring", r]).target_ring for r in "0123"] == [0, 1, 2, 3]


@pytest.mark.parametrize("steps,warmup", [(100, 10)])
def test_learning_rate_schedule(steps, warmup):
    assert train.lr_at(0, 0.0, 1.0, warmup) == pytest.approx(0.1)
    assert train.lr_at(warmup, 0.0, 1.0, warmup) == pytest.approx(1.0)
    assert train.lr_at(steps, 1.0, 1.0, warmup) == pytest.approx(0.02)
    assert train.run_progress(55, steps, warmup, elapsed=90.0, time_limit=100.0) == pytest.approx(0.9)


def test_tiny_training_run_with_coverage_and_a_lower_target(tmp_path, simulated):
    """--coverage and --target-snr reach simulate_frame, the crops' targets come from frame.target,
    and both are recorded."""
    history = tiny_run(
        tmp_path, "--batch-size", "4", "--crops-per-frame", "1", "--coverage", "--point-probability", "0.5",
        "--target-snr", "4.5",
    )  # fmt: skip
    seen = [(kwargs.get("coverage"), kwargs.get("target_snr"), has) for kwargs, _, has in simulated]
    assert history["coverage"] is True and history["target_snr"] == 4.5 and history["point_probability"] == 0.5
    assert "--coverage" in history["command"]
    assert seen and all(
        isinstance(c, Coverage) and c.point_probability == 0.5 and t == 4.5 and has for c, t, has in seen
    )
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tmp_path), "--target-snr", "0"])
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tmp_path), "--point-probability", "1.5"])


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory):
    """A tiny run's output folder: weights without the learned upsample."""
    base = tmp_path_factory.mktemp("plain")
    tiny_run(base, "--batch-size", "2")
    return base


def test_learned_upsample_starts_from_weights_without_it_at_their_logits(tmp_path, plain_weights):
    """--learned-upsample --init <weights without the residual>: the zeroed residual leaves the
    logits of the starting weights unchanged; training moves it and the result loads in the server."""
    base = plain_weights
    state = train.load_file(str(base / "peaknet.safetensors"))
    assert not any(k.startswith("head_upsample_layer.") for k in state)
    plain = load_peaknet(base / "peaknet.yaml", dtype="float32", device="cpu")
    config = train.model_config("tiny", 64, learned_upsample=True)
    model = train.PeakNet(train.PeakNetConfig.from_mapping(config)).eval()
    zeroed = train.load_init(model, state)
    assert sorted(zeroed) == ["head_upsample_layer.0.bias", "head_upsample_layer.0.weight"]
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))

    grown = tmp_path / "grown"
    history = tiny_run(grown, "--batch-size", "2", "--learned-upsample", "--init", str(base / "peaknet.safetensors"))
    assert history["learned_upsample"] is True
    assert history["config"]["uses_learned_upsample"] is True
    weight = train.load_file(str(grown / "peaknet.safetensors"))["head_upsample_layer.0.weight"]
    assert weight.abs().sum() > 0  # two steps moved the residual off zero
    served = load_peaknet(grown / "peaknet.yaml", dtype="float32", device="cpu")
    assert served.head_upsample_layer is not None and served(x).shape == (2, 2, 64, 96)


def test_init_with_other_missing_or_extra_parameters_is_refused(plain_weights):
    state = train.load_file(str(plain_weights / "peaknet.safetensors"))
    model = train.PeakNet(train.PeakNetConfig.from_mapping(train.model_config("tiny", 64)))
    lacking = {k: v for k, v in state.items() if not k.startswith("head_segmask.")}
    with pytest.raises(ValueError, match="lacks"):
        train.load_init(model, lacking)
    with pytest.raises(ValueError, match="does not have"):
        train.load_init(model, {**state, "extra.weight": torch.zeros(1)})
