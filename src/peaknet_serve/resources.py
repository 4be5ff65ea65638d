"""Files the package reads from its source checkout: the bundled model and the default server configs.

The server commands run from a checkout installed with ``pip install -e`` (``make install``); the
paths below are the checkout's top-level files.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_STORE = REPO_ROOT / "model_store"
BUNDLED_MODEL_CONFIG = MODEL_STORE / "peaknet" / "peaknet.yaml"
MODEL_CONFIG = REPO_ROOT / "model-config.yaml"
SERVER_CONFIG = REPO_ROOT / "config.properties"
