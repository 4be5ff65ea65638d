"""CrystFEL indexes what the server finds: peaknet-peakfind's files and the HTTP CXI answer (joined to its
frames) of the bundled model on peaksim frames of one known crystal, 4-D input of four panels, through a
geometry file peaknet-geometry writes. Skipped where CrystFEL is not installed (CRYSTFEL_BIN, PATH or
../shared/tools/crystfel/bin)."""

from __future__ import annotations

import h5py
import pytest
import requests
import yaml

from peaknet_serve.clients import peakfind
from peaknet_serve.clients.payloads import encode_request
from peaknet_serve.encode.cxi import DATA_PATH, attach_frames
from peaknet_serve.eval.crystfel import crystfel_bin, run_indexamajig
from peaknet_serve.eval.indexing import (
    LYSOZYME,
    read_truth_orientations,
    score_run,
    simulate_known_cell,
    write_known_cell_run,
)
from peaknet_serve.geometry import ExperimentSetup, grid_geometry, write_geometry
from peaknet_serve.launch.archive import build
from peaknet_serve.resources import BUNDLED_MODEL_CONFIG
from tests.e2e.conftest import TEST_MODEL_CONFIG, launch_server

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(crystfel_bin() is None, reason="CrystFEL not found (CRYSTFEL_BIN, PATH, ../shared)"),
]

# Four ePix10k2M modules around the beam, close enough for lysozyme spots out to ~3.5 A.
DETECTOR = grid_geometry("four-module", 2, 2, (352, 384), 100e-6, gap=1.0e-3)
SETUP = ExperimentSetup(clen_m=0.05, photon_energy_ev=9500.0, adu_per_photon=100.0)
N_FRAMES = 3


@pytest.fixture(scope="module")
def bundled_server(tmp_path_factory):
    """A TorchServe serving the bundled (trained) model in float32."""
    store = tmp_path_factory.mktemp("bundled_store")
    config = store.parent / "bundled-model-config.yaml"
    handler = {**TEST_MODEL_CONFIG["handler"], "model_label": "peaknet-bundled", "warmup": False}
    config.write_text(yaml.safe_dump({**TEST_MODEL_CONFIG, "responseTimeout": 600, "handler": handler}))
    build(BUNDLED_MODEL_CONFIG, None, config, store)
    server = launch_server(tmp_path_factory.mktemp("torchserve_bundled"), store, {"PEAKNET_PRECISION": "float32"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crystfel_run")
    frames, reciprocal = simulate_known_cell(DETECTOR, N_FRAMES, LYSOZYME, SETUP, seed=3)
    (folder / "raw").mkdir()
    write_known_cell_run(folder / "raw" / "run.cxi", frames, reciprocal)
    (folder / "four-module.geom").write_text(write_geometry(DETECTOR, SETUP))
    LYSOZYME.write(folder / "lysozyme.cell")
    return folder, [int(f.peaks.strong.sum()) for f in frames]


def index_and_score(peak_file, folder, name):
    events = [(peak_file, i) for i in range(N_FRAMES)]
    result = run_indexamajig(
        events, folder / "four-module.geom", folder / "lysozyme.cell", folder / "index", name, indexing="asdf", jobs=2
    )
    assert result.returncode == 0, result.stderr[-3000:]
    truth = read_truth_orientations(folder / "raw" / "run.cxi")
    return result, score_run(result, events, {e: truth[e[1]] for e in events})


def test_peakfind_files_index_with_the_true_orientation(bundled_server, run_folder):
    folder, strong = run_folder
    assert min(strong) >= 40, "every frame has enough strong spots to index"
    out = folder / "peaks"
    assert (
        peakfind.main(
            [
                str(folder / "raw"),
                "-o",
                str(out),
                "--url",
                bundled_server.inference_url,
                "--frames-per-request",
                "1",
                "--concurrency",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    result, score = index_and_score(out / "run_peaks.cxi", folder, "peakfind")
    assert score.coordinate_warnings == 0, result.coordinate_warnings[:5]
    assert score.indexed >= N_FRAMES - 1, result.stderr[-3000:]
    assert score.true_orientation == score.indexed


def test_http_cxi_answer_joined_to_its_frames_indexes_the_same(bundled_server, run_folder):
    folder, _ = run_folder
    with h5py.File(folder / "raw" / "run.cxi", "r") as h5:
        frames = h5[DATA_PATH][()]
    request = encode_request(frames, "raw")
    answer = requests.post(
        bundled_server.predict_url,
        data=request.body,
        headers={**request.headers, "Accept": "application/x-hdf5"},
        timeout=600,
    )
    assert answer.status_code == 200, answer.text[:500]
    (folder / "answers").mkdir(exist_ok=True)
    path = folder / "answers" / "run_answer.cxi"
    path.write_bytes(answer.content)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["frames_included"] == 0
    attach_frames(path, folder / "raw" / "run.cxi")
    result, score = index_and_score(path, folder, "answer")
    assert score.coordinate_warnings == 0, result.coordinate_warnings[:5]
    assert score.indexed >= N_FRAMES - 1, result.stderr[-3000:]
    assert score.true_orientation == score.indexed
