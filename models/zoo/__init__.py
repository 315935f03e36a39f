"""The built-in model zoo: small real models trained here on the world, weights shipped."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
CARDS_DIR = Path(__file__).parent / "cards"
