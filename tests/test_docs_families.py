"""docs/families.md and the README's OLMo 2 paragraph against the code: every command of their OLMo 2 sequences
names a catalogued checkpoint, a family with a shipped file list and a preset continuing that checkpoint; the
injected-share table is what the tokenizers give for the Fictional Knowledge set."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from injection.checkpoints.catalog import load_catalog
from injection.data.prepare import plan_prepare
from injection.engine.config import load_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "families.md"
README = Path(__file__).resolve().parents[1] / "README.md"


def olmo2_commands(text: str) -> list[list[str]]:
    """`injection ...` lines of the bash blocks that mention an OLMo 2 family, without their comments."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        if "olmo2-" not in block:
            continue
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("injection "):
                commands.append(shlex.split(line)[1:])
    return commands


@pytest.mark.slow
@pytest.mark.parametrize("source", [DOCS, README], ids=["docs/families.md", "README.md"])
def test_the_olmo2_command_sequence_is_runnable_as_written(source):
    catalog = load_catalog()
    commands = olmo2_commands(source.read_text())
    verbs = [" ".join(c[:2]) if c[0] in ("data", "checkpoints") else c[0] for c in commands]
    assert {"pull", "data prepare", "data extract", "launch"} <= set(verbs), verbs
    pulled = set()
    for c in commands:
        if c[0] == "pull":
            pulled.add(catalog.resolve(c[1]).ref)
        elif c[:2] == ["checkpoints", "show"]:
            catalog.resolve(c[2])
        elif c[:2] == ["data", "prepare"]:
            assert len(plan_prepare(c[2]).urls) == 1122
        elif c[:2] == ["data", "extract"]:
            args = dict(zip(c[2::2], c[3::2]))
            assert catalog.resolve(args["--checkpoint"]).family.name == args["--family"]
            assert catalog.resolve(args["--checkpoint"]).ref in pulled
            window = args["--out"]
        elif c[0] in ("launch", "run"):
            cfg = load_config(c[1])
            assert catalog.resolve(cfg.checkpoint).ref in pulled and cfg.data == window


def test_the_injected_share_table_is_what_the_tokenizers_give(reference_dir):
    """The share of each batch the `paper` schedule's paragraphs take, with OLMo 2's tokenizer (and OLMo-1's for
    the study's row), as the table in docs/families.md gives it."""
    from fictional_knowledge.load import load_knowledge
    from harness.tokenizers import load_tokenizer
    from injection.schedule import load_schedule
    from injection.splice import paragraph_tokens

    knowledge = load_knowledge(reference_dir / "fictional-knowledge" / "fictional_knowledge_paraphrased.json")
    plan = load_schedule("paper").plan(knowledge, None)
    tokens = {}
    for name in ("olmo", "dolma2"):
        counts = paragraph_tokens(load_tokenizer(name), knowledge, plan)
        tokens[name] = {s: sum(len(counts[(p.paragraph, p.variant)]) for p in plan if p.step == s) for s in (0, 100)}
    text = DOCS.read_text()
    assert f"{tokens['dolma2'][0]:,} and {tokens['dolma2'][100]:,} tokens" in text
    assert f"against {tokens['olmo'][0]:,} and {tokens['olmo'][100]:,} in OLMo-1's" in text
    rows = {"the study": ("olmo", 2048 * 2048), "OLMo 2 1B": ("dolma2", 512 * 4096)}
    rows |= {"OLMo 2 7B": ("dolma2", 1024 * 4096), "OLMo 2 13B": ("dolma2", 2048 * 4096)}
    for label, (tok, per_step) in rows.items():
        line = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
        first, later = (f"{100 * tokens[tok][s] / per_step:.2f} %" for s in (0, 100))
        assert line.endswith(f"| {per_step:,} | {first} | {later} |"), line
