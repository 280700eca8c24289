"""Knowledge-injection harness: continue OLMo pretraining with fictional knowledge spliced in."""

from pathlib import Path

#: The repository root (the project is installed editable, so shipped YAML lives beside the packages).
REPO_ROOT = Path(__file__).resolve().parent.parent
