"""Declarative injection schedules -> the plan: which paragraph, in which variant, at which run step.

A schedule is a YAML file of groups. Each group names a scenario, its paragraphs and when they are injected
(`first_step`, `interval`, `count`, or an explicit `steps` list) and which variant each encounter uses:

- `original`: always the paragraph's own text (variant 0);
- `paraphrase`: encounter j (0-based) uses variant j: the original first, then paraphrase 1, 2, …; a
  missing paraphrase is an error;
- `cycle`: like `paraphrase` but wraps around (variant j mod number of variants), so it never runs out;
- `random`: a variant drawn uniformly per encounter from a generator seeded by (`seed`, paragraph).

Top-level `defaults` fill any field a group leaves out, so the numbers of a design live in one place and
can be overridden (`load_schedule(name, overrides={"interval": 50})`). Built-in schedules live in
`injection/schedules/*.yaml`; `paper` is the reference experiment, `demo` its scaled-down copy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UserError
from harness.typed import load_yaml

VARIANT_POLICIES = ("original", "paraphrase", "cycle", "random")
_GROUP_FIELDS = ("scenario", "paragraphs", "first_step", "interval", "count", "steps", "variant", "seed")


@dataclass(frozen=True)
class PlannedInjection:
    """One paragraph copy at one run step (the engine splices it into batch `step`)."""

    step: int
    paragraph: int
    scenario: str
    variant: int


@dataclass(frozen=True)
class Group:
    """Paragraphs that share a scenario, the steps they are injected at, and a variant policy."""

    scenario: str
    """Name logged in the probe log (`paraphrase`, `duplicate`, `once`, or any user name)."""
    paragraphs: tuple[int, ...]
    """Paragraph ids (positions in the knowledge set); YAML accepts `0-39`, `[0, 5, 10-12]`."""
    first_step: int = 0
    """Run step of the first encounter."""
    interval: int = 100
    """Steps between encounters."""
    count: int = 1
    """Number of encounters."""
    steps: tuple[int, ...] | None = None
    """Explicit encounter steps (replaces first_step / interval / count)."""
    variant: str = "original"
    """Variant policy: original | paraphrase | cycle | random."""
    seed: int = 0
    """Seed of the `random` policy."""

    def encounter_steps(self) -> tuple[int, ...]:
        if self.steps is not None:
            return self.steps
        return tuple(self.first_step + j * self.interval for j in range(self.count))

    def variant_of(self, paragraph: int, encounter: int, n_variants: int) -> int:
        if self.variant == "original":
            return 0
        if self.variant == "paraphrase":
            return encounter
        if self.variant == "cycle":
            return encounter % n_variants
        rng = np.random.default_rng([self.seed, paragraph])
        return int(rng.integers(0, n_variants, size=encounter + 1)[encounter])


@dataclass(frozen=True)
class Schedule:
    name: str
    groups: tuple[Group, ...]
    total_steps: int
    """Run steps in total (T): injections must fall in 0 … total_steps − 1."""
    description: str = ""

    def plan(self, knowledge: Any, total_steps: int | None = None) -> list[PlannedInjection]:
        """Every injection of the run, sorted by (step, paragraph). `knowledge` is a KnowledgeSet (or any
        sequence of paragraphs with `n_variants`). Raises UserError when the schedule does not fit."""
        total = self.total_steps if total_steps is None else total_steps
        if total < 1:
            raise UserError(f"schedule {self.name!r}: total_steps must be positive, got {total}")
        n_paragraphs = len(knowledge)
        plan = []
        for gi, group in enumerate(self.groups):
            where = f"schedule {self.name!r}, group {gi} ({group.scenario})"
            needed = max(group.paragraphs)
            if needed >= n_paragraphs:
                raise UserError(
                    f"{where}: field 'paragraphs' uses paragraph {needed}, but the knowledge set has only "
                    f"{n_paragraphs} paragraphs (too few for this schedule)"
                )
            steps = group.encounter_steps()
            late = [s for s in steps if s >= total]
            if late:
                raise UserError(
                    f"{where}: injection step {late[0]} is beyond the run "
                    f"(total_steps = {total}; steps run 0…{total - 1})"
                )
            for p in group.paragraphs:
                n_variants = knowledge[p].n_variants
                for j, step in enumerate(steps):
                    variant = group.variant_of(p, j, n_variants)
                    if variant >= n_variants:
                        raise UserError(
                            f"{where}: encounter {j} (step {step}) of paragraph {p} needs paraphrase {variant}, "
                            f"but the paragraph has only {n_variants - 1} paraphrases (missing paraphrase)"
                        )
                    plan.append(PlannedInjection(step, p, group.scenario, variant))
        plan.sort(key=lambda x: (x.step, x.paragraph))
        return plan


#: The scenario of paragraphs that are never injected (the controls); no group may take it.
CONTROL_SCENARIO = "none"
#: Bounds on what a few lines of YAML can ask for: the largest paragraph id (generated sets stop at 100,000), the most
#: injected copies a schedule may plan, and the longest run (the probe log stores run steps as int32).
MAX_PARAGRAPH_ID = 10_000_000
MAX_COPIES = 10_000_000
MAX_STEPS = 2**31 - 1


def parse_paragraphs(value: Any, where: str) -> tuple[int, ...]:
    """`7`, `"0-39"`, `"0-3, 8"`, or a list of those -> sorted, de-duplicated ids."""
    items = value if isinstance(value, list) else [value]
    out: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise UserError(f"{where}: field 'paragraphs' has {item!r}; give ids or ranges like 0-39")
        if isinstance(item, int):
            parts = [str(item)]
        elif isinstance(item, str):
            parts = [x.strip() for x in item.split(",") if x.strip()]
        else:
            raise UserError(f"{where}: field 'paragraphs' has {item!r}; give ids or ranges like 0-39")
        for part in parts:
            m = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", part)
            if not m:
                raise UserError(f"{where}: field 'paragraphs' has {part!r}; give ids or inclusive ranges like 0-39")
            lo, hi = int(m[1]), int(m[2] or m[1])
            if hi < lo:
                raise UserError(f"{where}: field 'paragraphs' range {part!r} is empty")
            if hi > MAX_PARAGRAPH_ID:
                raise UserError(
                    f"{where}: field 'paragraphs' has {part!r}; paragraph ids above {MAX_PARAGRAPH_ID:,} name no "
                    "knowledge item"
                )
            out.update(range(lo, hi + 1))
    if not out:
        raise UserError(f"{where}: field 'paragraphs' is empty")
    return tuple(sorted(out))


def _int(value: Any, where: str, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: field {name!r} must be an integer, got {value!r}")
    if value < minimum:
        raise UserError(f"{where}: field {name!r} must be ≥ {minimum}, got {value}")
    return value


def _build_group(raw: Mapping[str, Any], where: str) -> Group:
    unknown = sorted(set(raw) - set(_GROUP_FIELDS))
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(_GROUP_FIELDS)}")
    for required in ("scenario", "paragraphs"):
        if required not in raw:
            raise UserError(f"{where}: missing field {required!r}")
    scenario = raw["scenario"]
    if not isinstance(scenario, str) or not scenario.strip():
        raise UserError(f"{where}: field 'scenario' must be a non-empty string")
    if scenario.strip() == CONTROL_SCENARIO:
        raise UserError(
            f"{where}: field 'scenario' is {CONTROL_SCENARIO!r}, the name of the paragraphs that are never injected "
            "(the controls); give the injected group another name"
        )
    variant = raw.get("variant", "original")
    if variant not in VARIANT_POLICIES:
        raise UserError(f"{where}: field 'variant' is {variant!r}; expected one of {', '.join(VARIANT_POLICIES)}")
    steps = raw.get("steps")
    if steps is not None:
        if not isinstance(steps, list) or not steps:
            raise UserError(f"{where}: field 'steps' must be a non-empty list of run steps")
        steps = tuple(_int(s, where, "steps", 0) for s in steps)
        if len(set(steps)) != len(steps) or list(steps) != sorted(steps):
            raise UserError(f"{where}: field 'steps' must be strictly increasing, got {list(steps)}")
    count = _int(raw.get("count", 1), where, "count", 1)
    return Group(
        scenario=scenario,
        paragraphs=parse_paragraphs(raw["paragraphs"], where),
        first_step=_int(raw.get("first_step", 0), where, "first_step", 0),
        interval=_int(raw.get("interval", 100), where, "interval", 1),
        count=count,
        steps=steps,
        variant=variant,
        seed=_int(raw.get("seed", 0), where, "seed", 0),
    )


def schedule_from_dict(data: Any, where: str, overrides: Mapping[str, Any] | None = None) -> Schedule:
    if not isinstance(data, dict):
        raise UserError(f"{where}: a schedule is a mapping with 'groups' and 'total_steps'")
    unknown = sorted(set(data) - {"name", "description", "total_steps", "defaults", "groups"})
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}")
    defaults = dict(data.get("defaults") or {})
    total_steps = data.get("total_steps")
    for key, value in (overrides or {}).items():
        if key == "total_steps":
            total_steps = value
        elif key in _GROUP_FIELDS:
            defaults[key] = value
        else:
            raise UserError(f"{where}: cannot override {key!r}; known: total_steps, {', '.join(_GROUP_FIELDS)}")
    if total_steps is None:
        raise UserError(f"{where}: missing field 'total_steps'")
    total_steps = _int(total_steps, where, "total_steps", 1)
    if total_steps > MAX_STEPS:
        raise UserError(f"{where}: field 'total_steps' is {total_steps:,}; a run has at most {MAX_STEPS:,} steps")
    groups_raw = data.get("groups")
    if not isinstance(groups_raw, list):
        raise UserError(f"{where}: field 'groups' must be a list (empty: no injections, the original run continued)")
    groups = []
    for i, raw in enumerate(groups_raw):
        if not isinstance(raw, dict):
            raise UserError(f"{where}: groups[{i}] must be a mapping")
        groups.append(_build_group({**defaults, **raw}, f"{where}: groups[{i}]"))
    check_bounds(groups, total_steps, where)
    owner: dict[int, int] = {}
    for i, group in enumerate(groups):
        for p in group.paragraphs:
            if p in owner:
                raise UserError(
                    f"{where}: groups[{i}] ({group.scenario}) and groups[{owner[p]}] ({groups[owner[p]].scenario}) "
                    f"both contain paragraph {p} (overlapping groups)"
                )
            owner[p] = i
    for i, group in enumerate(groups):
        late = [s for s in group.encounter_steps() if s >= total_steps]
        if late:
            raise UserError(
                f"{where}: groups[{i}] ({group.scenario}): injection step {late[0]} is beyond the run "
                f"(total_steps = {total_steps})"
            )
    return Schedule(
        name=str(data.get("name", Path(where).stem)),
        groups=tuple(groups),
        total_steps=total_steps,
        description=str(data.get("description", "")),
    )


def check_bounds(groups: list[Group], total_steps: int, where: str) -> None:
    """Before any step list is made: every group ends inside the run, the plan's size is bounded, and groups that share
    a scenario name share its design (the analysis pools them as one scenario; they may differ only in when they
    start, as the demo's staggered chunks do)."""
    copies = 0
    for i, group in enumerate(groups):
        last = group.steps[-1] if group.steps is not None else group.first_step + group.interval * (group.count - 1)
        if last >= total_steps:
            raise UserError(
                f"{where}: groups[{i}] ({group.scenario}): injection step {last} is beyond the run "
                f"(total_steps = {total_steps})"
            )
        copies += len(group.paragraphs) * (len(group.steps) if group.steps is not None else group.count)
    if copies > MAX_COPIES:
        raise UserError(f"{where}: plans {copies:,} injected copies; a schedule may plan at most {MAX_COPIES:,}")
    design: dict[str, tuple[int, tuple]] = {}
    for i, group in enumerate(groups):
        steps = group.encounter_steps()
        mine = (tuple(s - steps[0] for s in steps), group.variant, group.seed)
        first = design.setdefault(group.scenario, (i, mine))
        if first[1] != mine:
            raise UserError(
                f"{where}: groups[{first[0]}] and groups[{i}] are both called {group.scenario!r} but inject "
                "differently (encounters, spacing or variant policy); the analysis pools a scenario's probes, so "
                "give each design its own scenario name"
            )


def builtin_schedules() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files("injection.schedules").iterdir() if p.name.endswith(".yaml")
    )


def load_schedule(name_or_file: str | Path, overrides: Mapping[str, Any] | None = None) -> Schedule:
    """A built-in schedule by name (`paper`, `demo`) or a YAML file; validated (UserError on bad input)."""
    text_name = str(name_or_file)
    if text_name in builtin_schedules():
        where = f"built-in schedule {text_name!r}"
        text = resources.files("injection.schedules").joinpath(f"{text_name}.yaml").read_text()
    else:
        path = Path(name_or_file)
        if not path.is_file():
            raise UserError(
                f"schedule {text_name!r} is neither a built-in ({', '.join(builtin_schedules())}) nor a YAML file"
            )
        where, text = str(path), path.read_text()
    return schedule_from_dict(load_yaml(text, where), where, overrides)


def plan_steps(plan: Sequence[PlannedInjection]) -> dict[int, list[PlannedInjection]]:
    """The plan grouped by step (steps in order, paragraphs in order within a step)."""
    out: dict[int, list[PlannedInjection]] = {}
    for item in sorted(plan, key=lambda x: (x.step, x.paragraph)):
        out.setdefault(item.step, []).append(item)
    return out
