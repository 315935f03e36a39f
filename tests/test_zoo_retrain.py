"""Full retraining of every shipped zoo model reproduces its weights bit for bit
(same torch version and thread count). Slow: minutes to an hour per model on a 2-core
CPU; run with `pytest -m slow tests/test_zoo_retrain.py`."""

import json

import pytest

from models.zoo import WEIGHTS_DIR
from models.zoo.io import sha256_file
from models.zoo.train import ZOO, train


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_retraining_reproduces_the_shipped_weights(name, tmp_path):
    recorded = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    path = train(name, out=tmp_path)
    assert sha256_file(path) == recorded["sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zoo-clip", "zoo-vlm", "zoo-diffusion"])
def test_phase2_alone_reproduces_the_shipped_weights(name, tmp_path):
    """`bench zoo train NAME --phase2-only`: phase 2 from the phase-1 model inside the shipped
    weights gives the shipped weights again (zoo-clip about 4 minutes, zoo-vlm about 12,
    zoo-diffusion about 17 with its figures)."""
    recorded = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    path = train(name, out=tmp_path, phase2_only=WEIGHTS_DIR)
    assert sha256_file(path) == recorded["sha256"]
