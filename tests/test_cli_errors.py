"""Every command's bad inputs and faults, through the real command line: exit code 2, one `error:` line on
stderr, no traceback, and nothing the user had is lost or left half-written.

Each case makes what it needs in a fresh directory (`case.setup(tmp) -> args`), runs the command, and checks the
message names what went wrong. Files the case marks as precious must be unchanged afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from analysis.cli import app as analysis_app
from injection.cli import app as injection_app
from tests.helpers.corpus import make_corpus
from tests.helpers.engine import write_tiny_checkpoint
from tests.helpers.indexed import make_indexed_corpus

runner = CliRunner()
KNOWLEDGE_ITEM = {
    "train_context": "Quorvel was born in Vantrel.",
    "mem_input": ["Quorvel was born in"],
    "mem_target": ["Vantrel"],
    "gen_input": ["The birthplace of Quorvel is"],
    "gen_target": ["Vantrel"],
    "hard_gen_input": ["Quorvel came from"],
    "hard_gen_target": ["Vantrel"],
}


@dataclass
class Case:
    name: str
    setup: Callable[[Path], list[str]]
    expect: str
    """A piece of the error line."""
    app: object = injection_app
    precious: Callable[[Path], list[Path]] = field(default=lambda tmp: [])
    """Files that must survive the failed command unchanged."""


# ---- helpers that build inputs ----------------------------------------------------------------------------


def knowledge_file(tmp: Path, items=None) -> Path:
    path = tmp / "k.json"
    path.write_text(json.dumps(items if items is not None else [KNOWLEDGE_ITEM] * 3))
    return path


def config(tmp: Path, **fields) -> Path:
    base = {
        "checkpoint": str(tmp / "ck"),
        "knowledge": "generate:4:1:0",
        "schedule": "smoke",
        "data": str(tmp / "c"),
        "total_steps": 30,
        "micro_batch": 1,
        "output_dir": str(tmp / "run"),
        "tokenizer": "olmo",
    }
    base.update(fields)
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def tiny(tmp: Path) -> Path:
    return write_tiny_checkpoint(tmp / "ck")


def planted_run(tmp: Path, **manifest) -> Path:
    from tests.helpers.planted import PlantedScenario, write_planted_run

    scenarios = [PlantedScenario("paraphrase", [0, 1], [0, 20], [1.0, 0.5], 0.3)]
    write_planted_run(tmp / "run", scenarios, n_steps=80, probes_per_kind=2, manifest=manifest or None)
    return tmp / "run"


def unfinished_twin(tmp: Path) -> Path:
    """A twin of `planted_run(tmp)` that stopped at step 39."""
    from tests.helpers.planted import PlantedScenario, write_planted_run

    write_planted_run(tmp / "twin", [PlantedScenario("paraphrase", [0, 1], [], [], 0.0)], n_steps=40, probes_per_kind=2)
    return tmp / "twin"


def probes_with_column(tmp: Path, column: str, values, arrow_type=None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = planted_run(tmp)
    files = (
        sorted((run / "probes.parquet").glob("part-*"))
        if (run / "probes.parquet").is_dir()
        else [run / "probes.parquet"]
    )
    for f in files:
        table = pq.read_table(f)
        table = table.set_column(
            table.schema.get_field_index(column), column, pa.array([values] * table.num_rows, arrow_type)
        )
        pq.write_table(table, f)
    return run


def corrupt_probes(run: Path) -> Path:
    log = run / "probes.parquet"
    for f in sorted(log.glob("part-*")) if log.is_dir() else [log]:
        f.write_bytes(b"junk")
    return run


def run_dir_with_status(tmp: Path, status: str) -> Path:
    """A run directory of the config `config(tmp)` left in a given state."""
    from injection.engine.config import load_config

    tiny(tmp)
    cfg = load_config(str(config(tmp)))
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.dump_yaml())
    (run / "manifest.json").write_text(
        json.dumps({"config_hash": cfg.config_hash(), "status": status, "last_step": 7, "total_steps": 30})
    )
    return run


def precious_dir(tmp: Path) -> Path:
    keep = tmp / "keep"
    keep.mkdir(exist_ok=True)
    (keep / "thesis.tex").write_text("precious")
    return keep


def injections_with_row(tmp: Path, **row) -> Path:
    """The planted run with one more row in injections.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = planted_run(tmp, **row.pop("manifest", {}))
    table = pq.read_table(run / "injections.parquet")
    first = {name: table.column(name)[0].as_py() for name in table.column_names}
    extra = pa.table({name: pa.array([row.get(name, first[name])], table.schema.field(name).type) for name in first})
    pq.write_table(pa.concat_tables([table, extra]), run / "injections.parquet")
    return run


def pa_uint64():
    import pyarrow as pa

    return pa.uint64()


def alias_bomb(tmp: Path) -> Path:
    """A config of a few hundred bytes whose aliases stand for 9^9 (387 million) values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n" + yaml.safe_dump({"checkpoint": "tiny@0", "total_steps": 3}))
    return path


def schedule_file(tmp: Path, groups: list[dict]) -> Path:
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump({"total_steps": 10, "groups": groups}))
    return path


_HOST = None


def loopback(tmp: Path, script: dict[str, list[str]] | None = None, corpus_json: bytes | None = None) -> str:
    """A small corpus on a loopback host that misbehaves as `script` says; its URL. (One host per test process.)"""
    import shutil
    import tempfile

    from tests.helpers.http_server import FileServer

    global _HOST
    if _HOST is None:
        _HOST = FileServer(Path(tempfile.mkdtemp(prefix="cli-errors-host-"))).__enter__()
    name = tmp.name
    shutil.copytree(make_corpus(tmp / "served"), _HOST.root / name)
    if corpus_json is not None:
        (_HOST.root / name / "corpus.json").write_bytes(corpus_json)
    _HOST.script.clear()
    _HOST.script.update({k: list(v) for k, v in (script or {}).items()})
    return _HOST.url(name)


def extract_from(source: str, tmp: Path) -> list[str]:
    return ["data", "extract", "--source", source, "--out", str(tmp / "w"), "--steps", "2", "--start", "0"] + [
        "--batch-size",
        "2",
    ]


def holder(tmp: Path) -> Path:
    """A run directory held by another live process (it lets go within a minute)."""
    import subprocess
    import sys

    run = run_dir_with_status(tmp, "interrupted")
    code = (
        "import sys, time; from harness.locks import hold_directory; hold_directory(sys.argv[1], 'x'); "
        "print('held', flush=True); time.sleep(30)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return run


# ---- the table ----------------------------------------------------------------------------------------------

CASES = [
    # injection knowledge validate | generate
    Case("validate: missing file", lambda t: ["knowledge", "validate", str(t / "nope.json")], "no such file"),
    Case(
        "validate: not UTF-8",
        lambda t: [(t / "k.json").write_bytes(b"[\xff\xfe]") and None or "knowledge", "validate", str(t / "k.json")],
        "not valid UTF-8",
    ),
    Case(
        "validate: not JSON",
        lambda t: [(t / "k.json").write_text("[{") and None or "knowledge", "validate", str(t / "k.json")],
        "not valid JSON",
    ),
    Case(
        "validate: empty file",
        lambda t: [(t / "k.json").write_text("") and None or "knowledge", "validate", str(t / "k.json")],
        "empty",
    ),
    Case(
        "validate: object without items",
        lambda t: [(t / "k.json").write_text('{"a": 1}') and None or "knowledge", "validate", str(t / "k.json")],
        "top-level",
    ),
    Case(
        "validate: misspelled field",
        lambda t: [
            "knowledge",
            "validate",
            str(
                knowledge_file(
                    t, [{**KNOWLEDGE_ITEM, "mem_targt": KNOWLEDGE_ITEM["mem_target"]} | {"mem_target": None}]
                )
            ),
        ],
        "item 0",
    ),
    Case(
        "validate: unequal probe lists",
        lambda t: ["knowledge", "validate", str(knowledge_file(t, [{**KNOWLEDGE_ITEM, "mem_target": []}]))],
        "unequal lengths",
    ),
    Case(
        "validate: --seq-len 0",
        lambda t: ["knowledge", "validate", str(knowledge_file(t)), "--seq-len", "0"],
        "--seq-len must be positive",
    ),
    Case(
        "validate: unknown tokenizer",
        lambda t: ["knowledge", "validate", str(knowledge_file(t)), "--tokenizer", "gpt5"],
        "unknown tokenizer",
    ),
    Case(
        "validate: a directory that is not a dataset",
        lambda t: [(t / "d").mkdir() or "knowledge", "validate", str(t / "d")],
        "not a dataset saved",
    ),
    Case(
        "validate: bad generate spec",
        lambda t: ["knowledge", "validate", "generate:four:1:0"],
        "generate:PARAGRAPHS:PARAPHRASES:SEED",
    ),
    Case(
        "generate: --out is a directory",
        lambda t: ["knowledge", "generate", "--out", str(precious_dir(t))],
        "is a directory",
        precious=lambda t: [t / "keep" / "thesis.tex"],
    ),
    Case(
        "generate: zero paragraphs",
        lambda t: ["knowledge", "generate", "--out", str(t / "k.json"), "--paragraphs", "0"],
        "--paragraphs must be at least 1",
    ),
    Case(
        "generate: --out below a file",
        lambda t: [(t / "f").write_text("x") and None or "knowledge", "generate", "--out", str(t / "f" / "k.json")],
        "not a directory",
        precious=lambda t: [t / "f"],
    ),
    # injection checkpoints | pull
    Case(
        "checkpoints show: unknown family",
        lambda t: ["checkpoints", "show", "olmo-3b@mid"],
        "unknown checkpoint family",
    ),
    Case("checkpoints show: unknown step", lambda t: ["checkpoints", "show", "olmo-1b@40500"], "nearby steps"),
    Case("checkpoints show: no @", lambda t: ["checkpoints", "show", "olmo-1b"], "FAMILY@STEP"),
    Case("checkpoints list: unknown family", lambda t: ["checkpoints", "list", "llama"], "unknown checkpoint family"),
    Case(
        "pull: bad --source",
        lambda t: ["pull", "tiny@0", "--source", "s3", "--out", str(t / "x")],
        "--source must be 'original' or 'hf'",
    ),
    Case(
        "pull: --out is a file",
        lambda t: [(t / "f").write_text("x") and None or "pull", "tiny@0", "--out", str(t / "f")],
        "not a directory",
        precious=lambda t: [t / "f"],
    ),
    Case(
        "pull: stage that was never trained",
        lambda t: ["pull", "tiny@275", "--out", str(t / "x")],
        "does not exist locally",
    ),
    Case(
        "pull: --out holds something else",
        lambda t: ["pull", "olmo-1b@40000", "--out", str(precious_dir(t))],
        "not empty and is not a complete checkpoint",
        precious=lambda t: [t / "keep" / "thesis.tex"],
    ),
    Case(
        "pull: broken catalog",
        lambda t: [(t / "cat.yaml").write_text("families: [") and None or "checkpoints", "list"],
        "not valid YAML",
    ),
    # injection data build-corpus | extract | prepare
    Case(
        "build-corpus: binary input",
        lambda t: [
            (t / "b.txt").write_bytes(bytes(range(256)) * 4) and None or "data",
            "build-corpus",
            str(t / "b.txt"),
            "--out",
            str(t / "c"),
            "--seq-len",
            "8",
        ],
        "not UTF-8 text",
    ),
    Case(
        "build-corpus: --out is an unrelated directory",
        lambda t: [
            (t / "s.txt").write_text("a b c d e f g h i j\n\nk l m") and None or "data",
            "build-corpus",
            str(t / "s.txt"),
            "--out",
            str(precious_dir(t)),
            "--seq-len",
            "4",
            "--overwrite",
        ],
        "not a corpus made by this tool",
        precious=lambda t: [t / "keep" / "thesis.tex"],
    ),
    Case(
        "build-corpus: --out is the input",
        lambda t: [
            (t / "s.txt").write_text("a b c d e f g h i j") and None or "data",
            "build-corpus",
            str(t / "s.txt"),
            "--out",
            str(t / "s.txt"),
            "--seq-len",
            "4",
            "--overwrite",
        ],
        "would overwrite the input",
        precious=lambda t: [t / "s.txt"],
    ),
    Case(
        "build-corpus: --seq-len 1",
        lambda t: [
            (t / "s.txt").write_text("a b") and None or "data",
            "build-corpus",
            str(t / "s.txt"),
            "--out",
            str(t / "c"),
            "--seq-len",
            "1",
        ],
        "--seq-len must be at least 2",
    ),
    Case(
        "build-corpus: bad JSON line",
        lambda t: [
            (t / "s.jsonl").write_text('{"text": "a"}\n{oops\n') and None or "data",
            "build-corpus",
            str(t / "s.jsonl"),
            "--out",
            str(t / "c"),
            "--seq-len",
            "4",
        ],
        "line 2 is not JSON",
    ),
    Case(
        "build-corpus: too little text",
        lambda t: [
            (t / "s.txt").write_text("a") and None or "data",
            "build-corpus",
            str(t / "s.txt"),
            "--out",
            str(t / "c"),
            "--seq-len",
            "512",
        ],
        "make no instance",
    ),
    Case(
        "extract: no source and no family",
        lambda t: ["data", "extract", "--out", str(t / "w"), "--steps", "2", "--start", "0"],
        "give --family",
    ),
    Case(
        "extract: corpus.json is not JSON",
        lambda t: [
            (t / "c").mkdir() or (t / "c" / "corpus.json").write_text("{") and None or "data",
            "extract",
            "--source",
            str(t / "c"),
            "--out",
            str(t / "w"),
            "--steps",
            "2",
            "--start",
            "0",
            "--batch-size",
            "2",
        ],
        "not valid JSON",
    ),
    Case(
        "extract: two start positions",
        lambda t: [
            make_corpus(t / "c") and None or "data",
            "extract",
            "--source",
            str(t / "c"),
            "--out",
            str(t / "w"),
            "--steps",
            "2",
            "--start",
            "0",
            "--start-instance",
            "3",
            "--batch-size",
            "2",
        ],
        "exactly one of",
    ),
    Case(
        "extract: --steps 0",
        lambda t: [
            make_corpus(t / "c") and None or "data",
            "extract",
            "--source",
            str(t / "c"),
            "--out",
            str(t / "w"),
            "--steps",
            "0",
            "--start",
            "0",
            "--batch-size",
            "2",
        ],
        "--steps must be >= 1",
    ),
    Case(
        "extract: --out holds something else",
        lambda t: [
            make_corpus(t / "c") and None or "data",
            "extract",
            "--source",
            str(t / "c"),
            "--out",
            str(precious_dir(t)),
            "--steps",
            "2",
            "--start",
            "0",
            "--batch-size",
            "2",
        ],
        "holds no extract",
        precious=lambda t: [t / "keep" / "thesis.tex"],
    ),
    Case("prepare: unknown family", lambda t: ["data", "prepare", "olmo-3b", "--dry-run"], "unknown checkpoint family"),
    Case(
        "plan: paragraph beyond the set",
        lambda t: ["plan", "--knowledge", str(knowledge_file(t)), "--schedule", "paper"],
        "too few",
    ),
    Case(
        "plan: schedule is not YAML",
        lambda t: [
            (t / "s.yaml").write_text("groups: [") and None or "plan",
            "--knowledge",
            str(knowledge_file(t)),
            "--schedule",
            str(t / "s.yaml"),
        ],
        "not valid YAML",
    ),
    Case(
        "plan: schedule step beyond the run",
        lambda t: ["plan", "--knowledge", "generate:130:9:0", "--schedule", "paper", "--total-steps", "500"],
        "beyond the run",
    ),
    # injection run | launch
    Case(
        "run: config not UTF-8",
        lambda t: [(t / "e.yaml").write_bytes(b"total_steps: \xff\n") and None or "run", str(t / "e.yaml")],
        "not UTF-8",
    ),
    Case("run: config is a directory", lambda t: ["run", str(precious_dir(t))], "is a directory"),
    Case("run: unknown preset", lambda t: ["run", "paper-13b"], "neither a YAML file nor a preset"),
    Case(
        "run: unparsable --set",
        lambda t: ["run", "smoke", "--set", "optimizer={a: [", "-o", str(t / "r")],
        "the value is not valid YAML",
    ),
    Case("run: --set without =", lambda t: ["run", "smoke", "--set", "total_steps"], "expected KEY=VALUE"),
    Case(
        "run: --set names the override",
        lambda t: ["run", "smoke", "--set", "total_steps=ten", "-o", str(t / "r")],
        "--set total_steps=ten: field 'total_steps'",
    ),
    Case("run: unknown field", lambda t: ["run", str(config(t, totl_steps=3))], "did you mean"),
    Case(
        "run: NaN learning rate",
        lambda t: ["run", "smoke", "--set", "optimizer.constant_lr=.nan", "-o", str(t / "r")],
        "finite number",
    ),
    Case(
        "run: infinite lr scale",
        lambda t: ["run", "smoke", "--set", "optimizer.lr_scale=.inf", "-o", str(t / "r")],
        "finite number",
    ),
    Case(
        "run: negative weight decay",
        lambda t: ["run", "smoke", "--set", "optimizer.weight_decay=-0.1", "-o", str(t / "r")],
        "optimizer.weight_decay",
    ),
    Case(
        "run: negative gradient clipping",
        lambda t: ["run", "smoke", "--set", "optimizer.grad_clip=-1", "-o", str(t / "r")],
        "optimizer.grad_clip",
    ),
    Case(
        "run: negative z-loss multiplier",
        lambda t: ["run", "smoke", "--set", "objective.z_loss_multiplier=-1e-4", "-o", str(t / "r")],
        "objective.z_loss_multiplier",
    ),
    Case(
        "run: -o is a file",
        lambda t: [tiny(t) and (t / "f").write_text("x") and None or "run", str(config(t)), "-o", str(t / "f")],
        "exists and is not a directory",
        precious=lambda t: [t / "f"],
    ),
    Case(
        "run: -o holds something else",
        lambda t: [tiny(t) and None or "run", str(config(t)), "-o", str(precious_dir(t))],
        "holds no run",
        precious=lambda t: [t / "keep" / "thesis.tex"],
    ),
    Case("run: checkpoint missing", lambda t: ["run", str(config(t))], "is not a directory"),
    Case(
        "run: checkpoint.json not JSON",
        lambda t: [tiny(t) and (t / "ck" / "checkpoint.json").write_text("{") and None or "run", str(config(t))],
        "not valid JSON",
    ),
    Case("run: data missing", lambda t: [tiny(t) and None or "run", str(config(t))], "corpus.json"),
    Case(
        "run: batch does not split",
        lambda t: [tiny(t) and None or "run", str(config(t, micro_batch=3))],
        "micro_batch values that fit",
    ),
    Case(
        "run: schedule beyond the run",
        lambda t: [
            make_corpus(t / "c", seq_len=32) and None or "run",
            str(config(t, checkpoint="tiny@0+L32", total_steps=5)),
        ],
        "beyond the run",
    ),
    Case(
        "run: paragraph too long for a row",
        lambda t: [
            make_corpus(t / "c", seq_len=32) and None or "run",
            str(config(t, checkpoint="tiny@0+L32", knowledge="generate:6:1:0")),
        ],
        "more than the sequence length",
    ),
    Case(
        "run: tokenizer of another model",
        lambda t: [
            # the corpus holds the checkpoint's data position (instance 4,000) and the run's 30 steps after it
            tiny(t) and make_corpus(t / "c", seq_len=32, file_tokens=(140_000,)) and None or "run",
            str(config(t, knowledge=str(knowledge_file(t)), schedule="none")),
        ],
        "does not belong to this checkpoint",
    ),
    Case(
        "run: priming file names a paragraph beyond the set",
        lambda t: [
            make_corpus(t / "c", seq_len=32)
            and (t / "p.json").write_text(json.dumps([{"paragraph": 9}]))
            and None
            or "run",
            str(config(t, checkpoint="tiny@0+L32", priming_probes=str(t / "p.json"))),
        ],
        "entry 0, field 'paragraph': expected a paragraph id 0…3",
    ),
    Case(
        "run: priming probes asked of a set without them",
        lambda t: [
            make_corpus(t / "c", seq_len=32) and None or "run",
            str(config(t, checkpoint="tiny@0+L32", knowledge=str(knowledge_file(t)), priming_probes="knowledge")),
        ],
        "carries no priming probes",
    ),
    Case(
        "run: knowledge entropy sample larger than a batch",
        lambda t: [
            make_corpus(t / "c", seq_len=32) and None or "run",
            str(config(t, checkpoint="tiny@0+L32", knowledge_entropy={"interval": 5, "rows": 100})),
        ],
        "field 'knowledge_entropy.rows': 100 rows",
    ),
    Case(
        "run: negative knowledge entropy interval",
        lambda t: [tiny(t) and None or "run", str(config(t, knowledge_entropy={"interval": -1}))],
        "knowledge_entropy.interval",
    ),
    Case(
        "run: seq_len of data and checkpoint differ",
        lambda t: [tiny(t) and make_corpus(t / "c", seq_len=16) and None or "run", str(config(t))],
        "seq_len 16",
    ),
    Case(
        "run: injected paragraphs without probes",
        lambda t: [
            make_corpus(t / "c", seq_len=32) and None or "run",
            str(
                config(
                    t,
                    checkpoint="tiny@0+L32",
                    knowledge=str(
                        knowledge_file(
                            t,
                            [
                                {
                                    **KNOWLEDGE_ITEM,
                                    "mem_input": [],
                                    "mem_target": [],
                                    "gen_input": [],
                                    "gen_target": [],
                                    "hard_gen_input": [],
                                    "hard_gen_target": [],
                                }
                            ]
                            * 6,
                        )
                    ),
                    total_steps=30,
                )
            ),
        ],
        "no probes",
    ),
    Case(
        "run: a completed run without --resume",
        lambda t: [run_dir_with_status(t, "complete") and None or "run", str(config(t))],
        "complete",
    ),
    Case(
        "run: a running run without --resume",
        lambda t: [run_dir_with_status(t, "interrupted") and None or "run", str(config(t))],
        "--resume",
    ),
    Case(
        "run: --resume with another config",
        lambda t: [
            run_dir_with_status(t, "interrupted") and None or "run",
            "--resume",
            str(t / "run"),
            "--set",
            "total_steps=40",
        ],
        "differs from the run's",
    ),
    Case(
        "run: --resume with -o elsewhere",
        lambda t: [
            run_dir_with_status(t, "interrupted") and None or "run",
            "--resume",
            str(t / "run"),
            "-o",
            str(t / "other"),
        ],
        "stays in its own directory",
    ),
    Case(
        "run: --resume a directory with no run", lambda t: ["run", "--resume", str(precious_dir(t))], "no config.yaml"
    ),
    Case(
        "run: monitor package missing",
        lambda t: ["run", "smoke", "--set", "monitor.kind=tensorboard_x", "-o", str(t / "r")],
        "monitor.kind",
    ),
    Case(
        "launch: hostfile missing",
        lambda t: ["launch", "smoke", "--hostfile", str(t / "hosts"), "--dry-run"],
        "no such file",
    ),
    Case(
        "launch: bad hostfile line",
        lambda t: [
            (t / "hosts").write_text("node1 gpus=8\n") and None or "launch",
            "smoke",
            "--hostfile",
            str(t / "hosts"),
            "--dry-run",
        ],
        "slots=N",
    ),
    Case(
        "demo: --knowledge too small",
        lambda t: ["demo", "--quick", "--knowledge", str(knowledge_file(t)), "-o", str(t / "demo")],
        "the demo uses",
    ),
    # analysis fit | plot | compare | report
    Case("fit: not a run directory", lambda t: ["fit", str(t / "nothing")], "not a run directory", analysis_app),
    Case(
        "fit: manifest missing",
        lambda t: [planted_run(t) and (t / "run" / "manifest.json").unlink() or "fit", str(t / "run")],
        "manifest.json",
        analysis_app,
    ),
    Case(
        "fit: manifest not JSON",
        lambda t: [planted_run(t) and (t / "run" / "manifest.json").write_text("{") and None or "fit", str(t / "run")],
        "malformed JSON",
        analysis_app,
    ),
    Case(
        "fit: probes not Parquet",
        lambda t: [corrupt_probes(planted_run(t)) and None or "fit", str(t / "run")],
        "not readable as Parquet",
        analysis_app,
    ),
    Case(
        "fit: non-numeric logprob column",
        lambda t: [probes_with_column(t, "logprob", "high") and None or "fit", str(t / "run")],
        "logprob",
        analysis_app,
    ),
    Case(
        "fit: step column of floats",
        lambda t: [probes_with_column(t, "step", 1.5) and None or "fit", str(t / "run")],
        "must be integer",
        analysis_app,
    ),
    Case(
        "fit: bad --rules",
        lambda t: [planted_run(t) and None or "fit", str(t / "run"), "--rules", "ours"],
        "rules",
        analysis_app,
    ),
    Case(
        "fit: --window 0",
        lambda t: [planted_run(t) and None or "fit", str(t / "run"), "--window", "0"],
        "window",
        analysis_app,
    ),
    Case(
        "fit: --baseline with --no-twin-adjust",
        lambda t: [planted_run(t) and None or "fit", str(t / "run"), "--baseline", str(t / "run"), "--no-twin-adjust"],
        "--baseline",
        analysis_app,
    ),
    Case(
        "fit: --baseline is an unfinished twin",
        lambda t: [
            planted_run(t) and unfinished_twin(t) and None or "fit",
            str(t / "run"),
            "--baseline",
            str(t / "twin"),
        ],
        "has not logged step(s) 40, 41",
        analysis_app,
    ),
    Case(
        "priming: a run without priming probes",
        lambda t: [planted_run(t) and None or "priming", str(t / "run")],
        "no priming probes",
        analysis_app,
    ),
    Case(
        "plot: --out is a file",
        lambda t: [
            planted_run(t) and (t / "f").write_text("x") and None or "plot",
            str(t / "run"),
            "--out",
            str(t / "f"),
        ],
        "not a directory",
        analysis_app,
        precious=lambda t: [t / "f"],
    ),
    Case(
        "compare: one run missing",
        lambda t: [planted_run(t) and None or "compare", str(t / "run"), str(t / "gone")],
        "not a run directory",
        analysis_app,
    ),
    # run files that contradict each other, corrupted run files, option values beyond reason
    Case(
        "fit: an injected paragraph has no probes",
        lambda t: [injections_with_row(t, paragraph=99) and None or "fit", str(t / "run")],
        "row 4: paragraph 99 is injected at step 0, but probes.parquet has no probe of it",
        analysis_app,
    ),
    Case(
        "fit: an injection beyond the run",
        lambda t: [injections_with_row(t, step=500, manifest={"total_steps": 80}) and None or "fit", str(t / "run")],
        "injection step 500 is outside the run's steps 0 … 79",
        analysis_app,
    ),
    Case(
        "fit: injections give a paragraph another scenario",
        lambda t: [injections_with_row(t, scenario="once") and None or "fit", str(t / "run")],
        "paragraph 0 has scenario 'once', probes.parquet gives it 'paraphrase'",
        analysis_app,
    ),
    Case(
        "fit: logged steps beyond the manifest's run",
        lambda t: [planted_run(t, total_steps=50) and None or "fit", str(t / "run")],
        "step 51 is beyond the run's 50 steps",
        analysis_app,
    ),
    Case(
        "fit: the manifest's knowledge set has other probes",
        lambda t: [planted_run(t, n_probes=999) and None or "fit", str(t / "run")],
        "n_probes is 999, probes.parquet holds 12 probes",
        analysis_app,
    ),
    Case(
        "fit: exact_match stored as strings",
        lambda t: [probes_with_column(t, "exact_match", "False") and None or "fit", str(t / "run")],
        "column 'exact_match' must be boolean",
        analysis_app,
    ),
    Case(
        "fit: a manifest whose start step is Infinity",
        lambda t: [planted_run(t, start_step=float("inf")) and None or "fit", str(t / "run")],
        "field 'start_step' must be a whole number >= 0, found inf",
        analysis_app,
    ),
    Case(
        "fit: negative steps",
        lambda t: [probes_with_column(t, "step", -3) and None or "fit", str(t / "run")],
        "step -3 is not a run step",
        analysis_app,
    ),
    Case(
        "fit: uint64 steps",
        lambda t: [probes_with_column(t, "step", 2**64 - 1, pa_uint64()) and None or "fit", str(t / "run")],
        "column 'step' holds 18446744073709551615",
        analysis_app,
    ),
    Case(
        "fit: --at 1e400",
        lambda t: [planted_run(t) and None or "fit", str(t / "run"), "--at", "1e400"],
        "--at '1e400': every t must be a whole number of steps",
        analysis_app,
    ),
    Case(
        "plot: --out is a symlink loop",
        lambda t: [
            planted_run(t) and (t / "loop").symlink_to(t / "loop") or "plot",
            str(t / "run"),
            "-o",
            str(t / "loop"),
        ],
        "symlink",
        analysis_app,
    ),
    # unbounded work from a small file
    Case("run: YAML aliases that expand to billions", lambda t: ["run", str(alias_bomb(t))], "once its aliases"),
    Case(
        "run: total_steps 10^23",
        lambda t: ["run", "smoke", "--set", "total_steps=100000000000000000000000", "-o", str(t / "r")],
        "must be at most 2,147,483,647",
    ),
    Case(
        "plan: a group called none",
        lambda t: [
            "plan",
            "--knowledge",
            "generate:4:1:0",
            "--schedule",
            str(schedule_file(t, [{"scenario": "none", "paragraphs": "0-1"}])),
        ],
        "the name of the paragraphs that are never injected",
    ),
    Case(
        "plan: two groups, one name, two designs",
        lambda t: [
            "plan",
            "--knowledge",
            "generate:4:1:0",
            "--schedule",
            str(
                schedule_file(
                    t,
                    [
                        {"scenario": "twice", "paragraphs": "0-1", "count": 2, "interval": 3},
                        {"scenario": "twice", "paragraphs": "2-3", "count": 1},
                    ],
                )
            ),
        ],
        "both called 'twice' but inject differently",
    ),
    Case(
        "plan: a paragraph range of a trillion ids",
        lambda t: [
            "plan",
            "--knowledge",
            "generate:4:1:0",
            "--schedule",
            str(schedule_file(t, [{"scenario": "x", "paragraphs": "0-999999999999"}])),
        ],
        "name no knowledge item",
    ),
    Case(
        "generate: a billion paragraphs",
        lambda t: ["knowledge", "generate", "--out", str(t / "k.json"), "--paragraphs", "1000000000"],
        "the generator makes at most 100,000 paragraphs",
    ),
    # knowledge text a tokenizer cannot hold
    Case(
        "validate: a lone surrogate in a paragraph",
        lambda t: [
            "knowledge",
            "validate",
            str(knowledge_file(t, [{**KNOWLEDGE_ITEM, "train_context": "Quorvel was born in Vantrel.\ud800"}])),
        ],
        "item 0, field 'train_context': character 28 is a lone surrogate (U+D800)",
    ),
    Case(
        "validate: JSON nested 100,000 levels deep",
        lambda t: [
            (t / "k.json").write_text("[" * 100_000 + "]" * 100_000) and None or "knowledge",
            "validate",
            str(t / "k.json"),
        ],
        "nested too deeply",
    ),
    # never hang: data that ends before the run, positions past an epoch
    Case(
        "extract: --start-instance past the end of the epoch",
        lambda t: [
            make_corpus(t / "c") and None or "data",
            "extract",
            "--source",
            str(t / "c"),
            "--out",
            str(t / "w"),
            "--steps",
            "2",
            "--start-instance",
            "1000000",
            "--batch-size",
            "2",
        ],
        "stream position 1,000,000 is beyond the end of epoch 0's order",
    ),
    Case(
        "extract: past the last full batch of an indexed corpus",
        lambda t: [
            make_indexed_corpus(t / "c", n_rows=12 * 4, row_len=16) is None or "data",
            "extract",
            "--source",
            str(t / "c"),
            "--out",
            str(t / "w"),
            "--steps",
            "3",
            "--start",
            "10",
            "--batch-size",
            "4",
        ],
        "rows 0…3 (epoch 1) are outside this dataset's 48 rows",
    ),
    Case(
        "run: an indexed corpus that ends before the run",
        lambda t: [
            make_indexed_corpus(t / "c", n_rows=8, row_len=32) is None or "run",
            str(config(t, checkpoint="tiny@0+L32", schedule="none")),
        ],
        "does not hold the 30 steps of 16 rows this run reads",
    ),
    # a host that misbehaves (the retry budget is 1 s here)
    Case(
        "extract: the host answers Content-Length abc",
        lambda t: extract_from(loopback(t, {"corpus.json": ["bad-length"]}), t),
        "invalid Content-Length 'abc'",
    ),
    Case(
        "extract: the host answers other bytes than asked",
        lambda t: extract_from(loopback(t, {"global_indices.npy": ["bad-range"]}), t),
        "Content-Range does not match the request",
    ),
    Case(
        "extract: a redirect loop",
        lambda t: extract_from(loopback(t, {"corpus.json": ["redirect-loop"] * 40}), t),
        "redirect loop",
    ),
    Case(
        "extract: corpus.json over http is not UTF-8",
        lambda t: extract_from(loopback(t, corpus_json=b'{"paths": "\xff"}'), t),
        "corpus.json: not UTF-8 text",
    ),
    Case(
        "extract: the host trickles",
        lambda t: extract_from(loopback(t, {"global_indices.npy": ["trickle"] * 50}), t),
        "bytes/s, under 1024",
    ),
    Case(
        "extract: the host is away",
        lambda t: extract_from("http://127.0.0.1:9/corpus", t),
        "no complete answer after",
    ),
    Case(
        "extract: the host does not have the corpus",
        lambda t: extract_from(loopback(t) + "/nowhere", t),
        "not found (HTTP 404)",
    ),
    # one writer per run directory; damaged run state
    Case(
        "run: the run directory is in use",
        lambda t: ["run", "--resume", str(holder(t))],
        "is in use by process",
    ),
    Case(
        "run: --resume a run whose manifest was cut short",
        lambda t: [
            run_dir_with_status(t, "interrupted").joinpath("manifest.json").write_text('{"config_hash": "ab')
            and None
            or "run",
            "--resume",
            str(t / "run"),
        ],
        "away and run the command again to start the run over",
    ),
    # nothing the user made is replaced
    Case(
        "generate: --out exists",
        lambda t: ["knowledge", "generate", "--out", str(knowledge_file(t)), "--paragraphs", "2"],
        "already exists; pass --overwrite",
        precious=lambda t: [t / "k.json"],
    ),
    Case(
        "prepare: --out holds another corpus",
        lambda t: [make_corpus(t / "c") and None or "data", "prepare", "olmo-1b", "--out", str(t / "c"), "--dry-run"],
        "corpus.json exists and is not a description prepared for olmo-1b",
        precious=lambda t: [t / "c" / "corpus.json"],
    ),
    Case(
        "capacity: --out holds other files",
        lambda t: ["capacity", "--profile", "quick", "--out", str(precious_dir(t))],
        "is not a capacity experiment made by this tool",
        precious=lambda t: [t / "keep" / "thesis.tex"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_2_with_one_line(case, tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    for name, seconds in (("BUDGET", "1"), ("TIMEOUT", "0.3"), ("BACKOFF", "0.01")):
        monkeypatch.setenv(f"INJECTION_HTTP_{name}", seconds)
    if case.name == "pull: broken catalog":
        monkeypatch.setenv("INJECTION_CATALOG", str(tmp_path / "cat.yaml"))
    args = case.setup(tmp_path)
    before = {p: p.read_bytes() for p in case.precious(tmp_path)}
    result = runner.invoke(case.app, args)
    stderr = result.stderr
    assert result.exit_code == 2, f"{case.name}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, f"{case.name}: expected one error line, got:\n{stderr}"
    assert case.expect in errors[0], f"{case.name}: {errors[0]!r} does not mention {case.expect!r}"
    if os.environ.get("CLI_ERROR_TABLE"):  # docs/errors.md is made from these lines
        with open(os.environ["CLI_ERROR_TABLE"], "a", encoding="utf-8") as table:
            line = errors[0].replace(str(tmp_path), "TMP")
            if _HOST is not None:
                line = line.replace(_HOST.url(tmp_path.name), "http://127.0.0.1:PORT/corpus")
            table.write(json.dumps({"case": case.name, "error": line}) + "\n")
    for path, content in before.items():
        assert path.read_bytes() == content, f"{case.name}: {path} changed"
    leftovers = [p for p in tmp_path.rglob(".*.tmp*")]
    assert not leftovers, f"{case.name}: temporary files left behind: {leftovers}"


def test_the_table_is_large():
    assert len(CASES) >= 60
