"""`injection knowledge validate|generate`: thin wrappers over `validate_knowledge` and `write_knowledge`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from fictional_knowledge.bios import BiosSpec, write_bios
from fictional_knowledge.generate import write_knowledge
from fictional_knowledge.validate import validate_knowledge
from harness.errors import HarnessTyper, UserError

app = HarnessTyper(help="Validate and generate fictional knowledge sets.")


@app.command("validate")
def validate(
    path: Annotated[str, typer.Argument(help="Knowledge JSON file, dataset directory (save_to_disk), or hub name.")],
    tokenizer: Annotated[
        str | None,
        typer.Option(help="Also report token lengths under this tokenizer: olmo, a tokenizer .json, or a directory."),
    ] = None,
    seq_len: Annotated[
        int, typer.Option(help="Flag paragraph variants longer than this many tokens (EOS included).")
    ] = 2048,
) -> None:
    """Check a knowledge set item by item and print counts (and token lengths with --tokenizer).

    Exits 2 naming the item and field of the first problems, or the paragraphs too long for --seq-len.
    """
    if seq_len < 1:
        raise UserError(f"--seq-len must be positive, got {seq_len}")
    summary = validate_knowledge(path, tokenizer, seq_len)
    for line in summary.lines():
        typer.echo(line)
    if summary.tokens is not None and summary.tokens.too_long:
        where = ", ".join(f"{p} (variant {v}: {n} tokens)" for p, v, n in summary.tokens.too_long)
        raise UserError(f"{path}: paragraphs longer than --seq-len {seq_len} tokens with EOS: {where}")
    typer.echo("ok")


_BIOS = "bios style"


@app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSON file (reference schema), written atomically.")],
    paragraphs: Annotated[
        int, typer.Option(help="Number of paragraphs (knowledge items); with --style bios, people.")
    ] = 120,
    paraphrases: Annotated[
        int, typer.Option(help="Paraphrases per paragraph (bios: further variants, one per exposure).")
    ] = 9,
    seed: Annotated[int, typer.Option(help="Seed of the generator: the same seed gives the same bytes.")] = 0,
    style: Annotated[
        Literal["paragraphs", "bios"],
        typer.Option(
            help="paragraphs: invented worlds of 14 linked facts; bios: people with six attributes drawn from "
            "value sets of known size (the file records the value space)."
        ),
    ] = "paragraphs",
    cities: Annotated[int, typer.Option(help="Cities (birth and work city).", rich_help_panel=_BIOS)] = 200,
    universities: Annotated[int, typer.Option(help="Universities.", rich_help_panel=_BIOS)] = 300,
    majors: Annotated[int, typer.Option(help="Majors.", rich_help_panel=_BIOS)] = 100,
    employers: Annotated[int, typer.Option(help="Employers.", rich_help_panel=_BIOS)] = 263,
    first_year: Annotated[
        int, typer.Option(help="First birth year (dates: days 1-28 of every month).", rich_help_panel=_BIOS)
    ] = 1900,
    last_year: Annotated[int, typer.Option(help="Last birth year.", rich_help_panel=_BIOS)] = 2099,
    bios_style: Annotated[
        Literal["multi", "simple"],
        typer.Option(
            help="multi: bioS(N), multi + permute (every variant draws templates and sentence order afresh); "
            "simple: bioS^simple (one biography per person; needs --paraphrases 0).",
            rich_help_panel=_BIOS,
        ),
    ] = "multi",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
) -> None:
    """Write a new fictional knowledge set made by the project's own template generator (offline)."""
    if style == "bios":
        spec = BiosSpec(
            people=paragraphs,
            cities=cities,
            universities=universities,
            majors=majors,
            employers=employers,
            first_year=first_year,
            last_year=last_year,
            paraphrases=paraphrases,
            style=bios_style,
            seed=seed,
        )
        bios = write_bios(out, spec, overwrite=overwrite)
        sizes = ", ".join(f"{a.name} {a.size:,}" for a in bios.value_space.attributes)
        typer.echo(
            f"wrote {out}: {spec.people:,} people ({bios_style}), {paraphrases} paraphrases each, value sets "
            f"{sizes} (employer_city follows employer); {bios.name_space:,} possible names (seed {seed})"
        )
        return

    items = write_knowledge(out, paragraphs, paraphrases, seed, overwrite=overwrite)
    n_probes = sum(len(it[f]) for it in items for f in ("mem_input", "gen_input", "hard_gen_input"))
    typer.echo(f"wrote {out}: {len(items)} paragraphs, {paraphrases} paraphrases each, {n_probes} probes (seed {seed})")
