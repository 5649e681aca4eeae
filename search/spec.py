"""Study files (TOML) -> a frozen StudySpec. Parsing is strict: unknown keys and wrong types are errors.

The same parser reads a study file and the definition stored in the database, so a worker's view of
a study is exactly what `start` stored.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from how2sign.config import TrainConfig
from how2sign.evaluate import Criteria
from how2sign.rules import ALLOWED_HEADS, ConfigError, coerce

from .arms import ARM_NAMES, ENCODER_PARAM
from .errors import UserError
from .paths import check_name

PRUNERS = {"hyperband": ("min_resource", "max_resource", "reduction_factor", "bootstrap_count"),
           "asha": ("min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count"),
           "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
           "none": ()}
# The pruner keys that count steps: epochs where [train] report_every is 0 (a fraction allowed; where the steps
# are clips, search.study.build_pruner turns them into clips of the study's train split), else train clips.
RESOURCES = {"hyperband": ("min_resource", "max_resource"), "asha": ("min_resource",),
             "median": ("n_warmup_steps", "interval_steps"), "none": ()}
NO_RESOURCE = {"n_warmup_steps": 0, "interval_steps": 1}  # values that mean the same in either unit
SAMPLERS = {"tpe": ("n_startup_trials", "n_ei_candidates", "multivariate", "constant_liar", "group"),
            "random": (), "gp": ("n_startup_trials", "deterministic_objective")}
METRICS = ("val_loss", "params", "bleu", "chrf", "gap")
TOP_KEYS = {"name", "description", "direction", "directions", "metric", "metrics", "n_trials", "timeout",
            "train", "space", "anchor", "pruner", "sampler", "criteria", "constraint", "demo", "encoder_init",
            "confirm"}
CONFIRM_KEYS = ("of", "beam", "test_fingerprint")  # a confirmation study's [confirm] table (search/confirm.py)


class SpecError(UserError):
    """A study file or stored definition that cannot work; names the file and the key."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()

    def values(self) -> list:
        """Every value for categoricals, the two ends otherwise (enough to check d_model/nhead)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    directions: tuple[str, ...]
    metrics: tuple[str, ...]
    n_trials: int
    timeout: float | None
    train: dict
    space: tuple[Param, ...]
    anchor_name: str
    anchor_params: dict
    pruner: dict
    sampler: dict
    criteria: Criteria
    max_gap: float | None
    demo: dict
    raw: dict = field(repr=False, default_factory=dict)
    source: str = ""
    encoder_init: str = ""  # the study's pretrained encoder file (top-level key), for the `encoder` arms
    confirm: dict = field(default_factory=dict)  # [confirm] of a confirmation study: of, beam, test_fingerprint

    @property
    def is_confirmation(self) -> bool:
        """Trials re-train a search's configurations and are scored on val and test (search/confirm.py)."""
        return bool(self.confirm)

    @property
    def encoder_arms(self) -> tuple[str, ...]:
        return next((p.choices for p in self.space if p.name == ENCODER_PARAM), ())

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1

    def base_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.train, f"{self.source}: [train]")

    def with_demo(self) -> StudySpec:
        """The [demo] overrides applied: what runs on the built-in corpus in minutes on a CPU."""
        raw = json.loads(json.dumps(self.raw))
        demo = raw.pop("demo", {})
        raw["train"] = {**raw.get("train", {}), **demo.get("train", {})}
        for key in ("n_trials", "timeout"):
            if key in demo:
                raw[key] = demo[key]
        if "pruner" in demo:
            raw["pruner"] = {**raw.get("pruner", {}), **demo["pruner"]}
        return parse(raw, f"{self.source} (with [demo])")


def _take(table: dict, key: str, typ, where: str, default=None, required: bool = False):
    if key not in table:
        if required:
            raise SpecError(f"{where}: missing required key {key!r}")
        return default
    v = table[key]
    ok = isinstance(v, typ) and not (isinstance(v, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)))
    if not ok:
        name = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise SpecError(f"{where}: {key} must be {name}, got {v!r}")
    return v


def _no_unknown(table: dict, allowed, where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


# TrainConfig fields that say how a study measures, not what it searches: one value for every trial.
NOT_SEARCHED = {"report_every": "report_every is how the study measures its trials, the same for all of them (their "
                                "steps must be comparable): set it in [train], not in [space]"}


def _param(name: str, t: dict, types_: dict, where: str) -> Param:
    w = f"{where} [space.{name}]"
    if name == ENCODER_PARAM:
        return _encoder_param(t, w)
    if name not in types_:
        raise SpecError(f"{where}: [space] key {name!r} is not a TrainConfig field")
    if name in NOT_SEARCHED:
        raise SpecError(f"{w}: {NOT_SEARCHED[name]}")
    if not isinstance(t, dict):
        raise SpecError(f"{w}: must be a table like {{type = \"int\", low = 1, high = 4}}")
    kind = _take(t, "type", str, w, required=True)
    field_type = types_[name]
    if kind == "categorical":
        _no_unknown(t, {"type", "choices"}, w)
        choices = _take(t, "choices", list, w, required=True)
        if not choices:
            raise SpecError(f"{w}: choices is empty")
        for c in choices:
            _check_value(name, c, field_type, w)
        return Param(name, kind, choices=tuple(choices))
    if kind not in ("int", "float"):
        raise SpecError(f"{w}: type must be int, float or categorical, got {kind!r}")
    _no_unknown(t, {"type", "low", "high", "step", "log"}, w)
    num = int if kind == "int" else (int, float)
    low = _take(t, "low", num, w, required=True)
    high = _take(t, "high", num, w, required=True)
    step = _take(t, "step", num, w)
    log = _take(t, "log", bool, w, default=False)
    if (kind == "int") != (field_type is int):
        raise SpecError(f"{w}: type {kind!r} does not fit TrainConfig.{name}, which is {field_type.__name__}")
    if low > high:
        raise SpecError(f"{w}: low {low} is above high {high}")
    if log and (low <= 0 or step is not None):
        raise SpecError(f"{w}: log needs low > 0 and no step")
    if step is not None and step <= 0:
        raise SpecError(f"{w}: step must be > 0")
    return Param(name, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                 step, log)


def _encoder_param(t, w: str) -> Param:
    if not isinstance(t, dict) or t.get("type") != "categorical":
        raise SpecError(f"{w}: must be {{type = \"categorical\", choices = [...]}} over {', '.join(ARM_NAMES)}")
    _no_unknown(t, {"type", "choices"}, w)
    choices = _take(t, "choices", list, w, required=True)
    bad = [c for c in choices if c not in ARM_NAMES]
    if not choices or bad:
        raise SpecError(f"{w}: choices must be among {', '.join(ARM_NAMES)}, got {bad[0] if bad else 'none'!r}")
    return Param(ENCODER_PARAM, "categorical", choices=tuple(choices))


def _check_value(name: str, value, typ: type, where: str):
    if name == ENCODER_PARAM:
        if value not in ARM_NAMES:
            raise SpecError(f"{where}: encoder must be one of {', '.join(ARM_NAMES)}, got {value!r}")
        return value
    try:
        return coerce(name, value, typ, where)
    except ConfigError as exc:
        raise SpecError(str(exc)) from None


def _check_heads(space: dict[str, Param], train: TrainConfig, where: str) -> None:
    d_values = space["d_model"].values() if "d_model" in space else [train.d_model]
    h_values = space["nhead"].values() if "nhead" in space else [train.nhead]
    if "d_model" in space and space["d_model"].type != "categorical":
        d_values = list(range(int(space["d_model"].low), int(space["d_model"].high) + 1,
                              int(space["d_model"].step or 1)))
    if "nhead" in space and space["nhead"].type != "categorical":
        h_values = [h for h in ALLOWED_HEADS if space["nhead"].low <= h <= space["nhead"].high]
    if not any(d % h == 0 for d in d_values for h in h_values if h):
        raise SpecError(f"{where}: [space] impossible: no d_model in {d_values} is divisible by any nhead in {h_values}")


def _config_error(exc: ConfigError, where: str) -> SpecError:
    """TrainConfig's own message, prefixed with the file and table unless it names them already."""
    text = str(exc)
    return SpecError(text if text.startswith(where.split(" ")[0]) else f"{where}: {text}")


# d_model and nhead are checked together by _check_heads: a space may hold pairs that do not divide (such a
# trial fails with its reason), as long as some pair does.
_CHECKED_TOGETHER = ("d_model", "nhead")


def _check_reachable(space: dict[str, Param], train: dict, anchor: dict, where: str) -> None:
    """Refuse a space that can reach a value TrainConfig rejects: each parameter's ends (or each choice),
    with the rest of the configuration as [train] and the anchor set it."""
    anchor = {k: v for k, v in anchor.items() if k != ENCODER_PARAM}  # the arms set fixed, legal fields
    try:
        TrainConfig.from_dict({**train, **anchor}, f"{where} [anchor.params]")
    except ConfigError as exc:
        raise _config_error(exc, f"{where} [anchor.params]") from None
    for p in space.values():
        if p.name in _CHECKED_TOGETHER or p.name == ENCODER_PARAM:
            continue
        for value in p.values():
            try:
                TrainConfig.from_dict({**train, **anchor, p.name: value}, "")
            except ConfigError as exc:
                raise SpecError(f"{where} [space.{p.name}]: the space reaches {p.name} = {value!r}, which "
                                f"TrainConfig refuses: {str(exc).removeprefix(': ')}") from None


def _objectives(raw: dict, source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(directions, metrics): `direction`/`metric` for one objective, `directions`/`metrics` for several."""
    if "directions" in raw or "metrics" in raw:
        directions = tuple(_take(raw, "directions", list, source, required=True))
        metrics = tuple(_take(raw, "metrics", list, source, required=True))
        if len(directions) != len(metrics):
            raise SpecError(f"{source}: directions and metrics must have the same length")
    else:
        directions = (_take(raw, "direction", str, source, default="minimize"),)
        metrics = (_take(raw, "metric", str, source, default="val_loss"),)
    for d in directions:
        if d not in ("minimize", "maximize"):
            raise SpecError(f"{source}: direction must be minimize or maximize, got {d!r}")
    for m in metrics:
        if m not in METRICS:
            raise SpecError(f"{source}: metric must be one of {', '.join(METRICS)}, got {m!r}")
    return directions, metrics


def _anchor(raw: dict, space: dict[str, Param], types_: dict, source: str) -> tuple[str, dict]:
    """(anchor name, anchor params): the anchor must fix every [space] parameter to an allowed value."""
    anchor = _take(raw, "anchor", dict, source, default={})
    _no_unknown(anchor, {"name", "params"}, f"{source} [anchor]")
    anchor_name = _take(anchor, "name", str, f"{source} [anchor]", default="")
    anchor_params = _take(anchor, "params", dict, f"{source} [anchor]", default={})
    if anchor and not anchor_name:
        raise SpecError(f"{source} [anchor]: missing required key 'name'")
    for k, v in anchor_params.items():
        if k not in space:
            raise SpecError(f"{source} [anchor.params]: {k!r} is not a [space] parameter")
        _check_value(k, v, types_.get(k, str), f"{source} [anchor.params]")
    missing = [k for k in space if anchor_params and k not in anchor_params]
    if missing:
        raise SpecError(f"{source} [anchor.params]: missing {missing[0]!r}; the anchor must fix every [space] parameter")
    return anchor_name, dict(anchor_params)


def _pruner_and_sampler(raw: dict, multi_objective: bool, source: str) -> tuple[dict, dict]:
    pruner = dict(_take(raw, "pruner", dict, source, default={"type": "none"}))
    ptype = _take(pruner, "type", str, f"{source} [pruner]", default="none")
    if ptype not in PRUNERS:
        raise SpecError(f"{source} [pruner]: type must be one of {', '.join(PRUNERS)}, got {ptype!r}")
    _no_unknown(pruner, {"type", *PRUNERS[ptype]}, f"{source} [pruner]")
    if multi_objective and ptype != "none":
        raise SpecError(f"{source} [pruner]: Optuna cannot prune multi-objective studies; set type = \"none\"")
    sampler = dict(_take(raw, "sampler", dict, source, default={"type": "tpe"}))
    stype = _take(sampler, "type", str, f"{source} [sampler]", default="tpe")
    if stype not in SAMPLERS:
        raise SpecError(f"{source} [sampler]: type must be one of {', '.join(SAMPLERS)}, got {stype!r}")
    _no_unknown(sampler, {"type", "seed", *SAMPLERS[stype]}, f"{source} [sampler]")
    return pruner, sampler


def _check_resources(pruner: dict, train: TrainConfig, source: str) -> None:
    """The pruner's resources are numbers in the unit of the steps: with report_every set, train clips (a
    fraction, or fewer clips than one report, is an epoch count). See also check_epoch_resources."""
    where, every = f"{source} [pruner]", train.report_every
    for key, v in _resources(pruner, where):
        if every and v != NO_RESOURCE.get(key) and (not isinstance(v, int) or v < every):
            raise SpecError(f"{where}: {key} = {v} counts epochs, but [train] report_every = {every} makes the "
                            f"steps train clips: write it in clips (at least {every}, one report)")


def _resources(pruner: dict, where: str) -> list[tuple[str, float]]:
    """(key, value) of the resources the pruner sets, each checked to be a number >= 0 (> 0 but warm-up)."""
    out = []
    for key in RESOURCES[pruner.get("type", "none")]:
        if key not in pruner or (key == "min_resource" and pruner[key] == "auto" and pruner["type"] == "asha"):
            continue
        v = _take(pruner, key, (int, float), where)
        if v < 0 or (v == 0 and key != "n_warmup_steps"):
            raise SpecError(f"{where}: {key} must be {'>= 0' if key == 'n_warmup_steps' else '> 0'}, got {v}")
        out.append((key, v))
    return out


def check_epoch_resources(spec: StudySpec) -> None:
    """A study file without report_every whose pruner counts past the epoch budget wrote clips (load_spec: a
    file's own budget; a stored definition, or a shorter [demo] budget, is not refused for it)."""
    train, space = spec.base_config(), {p.name: p for p in spec.space}
    if train.report_every:
        return
    where, budget = f"{spec.source} [pruner]", _epoch_budget(train, space)
    for key, v in _resources(spec.pruner, where):
        if v > budget:
            raise SpecError(f"{where}: {key} = {v} is more than the {budget}-epoch budget: with [train] "
                            "report_every = 0 the pruner counts epochs (set report_every to count train clips)")


def _epoch_budget(train: TrainConfig, space: dict[str, Param]) -> int:
    """The most epochs a trial may run: epochs, plus the most fine-tuning epochs where Plan B may be on."""
    if "finetune_epochs" in space:
        return train.epochs + int(max(space["finetune_epochs"].values()))
    return train.total_epochs


def _criteria_and_gap(raw: dict, source: str) -> tuple[Criteria, float | None]:
    crit = _take(raw, "criteria", dict, source, default={})
    _no_unknown(crit, Criteria.names(), f"{source} [criteria]")
    for k in crit:
        _take(crit, k, (int, float), f"{source} [criteria]")
    constraint = _take(raw, "constraint", dict, source, default={})
    _no_unknown(constraint, {"max_gap"}, f"{source} [constraint]")
    max_gap = _take(constraint, "max_gap", (int, float), f"{source} [constraint]")
    return Criteria(**{k: float(v) for k, v in crit.items()}), float(max_gap) if max_gap is not None else None


def _demo(raw: dict, base: TrainConfig, source: str) -> dict:
    demo = _take(raw, "demo", dict, source, default={})
    _no_unknown(demo, {"n_trials", "timeout", "train", "pruner"}, f"{source} [demo]")
    if demo:
        try:
            base.replace(_take(demo, "train", dict, f"{source} [demo]", default={}), f"{source}: [demo.train]")
        except ConfigError as exc:
            raise _config_error(exc, f"{source}: [demo.train]") from None
        _take(demo, "n_trials", int, f"{source} [demo]")
    return dict(demo)


def _confirm_table(raw: dict, source: str) -> dict:
    table = _take(raw, "confirm", dict, source, default={})
    if not table:
        return {}
    where = f"{source} [confirm]"
    _no_unknown(table, CONFIRM_KEYS, where)
    out = {"of": _take(table, "of", str, where, required=True), "beam": _take(table, "beam", int, where, default=1),
           "test_fingerprint": _take(table, "test_fingerprint", str, where, default="")}
    if out["beam"] < 1:
        raise SpecError(f"{where}: beam must be >= 1, got {out['beam']}")
    return out


def parse(raw: dict, source: str) -> StudySpec:
    """Validate a study definition (a TOML document as a dict)."""
    _no_unknown(raw, TOP_KEYS, source)
    name = check_name(_take(raw, "name", str, source, required=True), f"{source}: name")
    description = _take(raw, "description", str, source, default="")
    directions, metrics = _objectives(raw, source)
    n_trials = _take(raw, "n_trials", int, source, default=20)
    if n_trials < 1:
        raise SpecError(f"{source}: n_trials must be >= 1")
    timeout = _take(raw, "timeout", (int, float), source)

    train_table = _take(raw, "train", dict, source, default={})
    try:
        base = TrainConfig.from_dict(train_table, f"{source}: [train]")
    except ConfigError as exc:
        raise _config_error(exc, f"{source}: [train]") from None
    types_ = TrainConfig.field_types()
    space_table = _take(raw, "space", dict, source, default={})
    space = {n: _param(n, t, types_, source) for n, t in space_table.items()}
    _check_heads(space, base, source)
    anchor_name, anchor_params = _anchor(raw, space, types_, source)
    _check_reachable(space, train_table, anchor_params, source)

    pruner, sampler = _pruner_and_sampler(raw, len(directions) > 1, source)
    _check_resources(pruner, base, source)
    criteria, max_gap = _criteria_and_gap(raw, source)
    demo = _demo(raw, base, source)
    encoder_init = _take(raw, "encoder_init", str, source, default="")
    confirm = _confirm_table(raw, source)
    return StudySpec(name=name, description=description, directions=directions, metrics=metrics,
                     n_trials=n_trials, timeout=float(timeout) if timeout else None, train=dict(train_table),
                     space=tuple(space.values()), anchor_name=anchor_name, anchor_params=anchor_params,
                     pruner=pruner, sampler=sampler, criteria=criteria, max_gap=max_gap, demo=demo, raw=raw,
                     source=source, encoder_init=encoder_init, confirm=confirm)


def find_study_file(name: str, cwd: Path | None = None) -> Path:
    """NAME as a path, then ./studies/NAME.toml, then the studies shipped with the package."""
    p = Path(name)
    if p.suffix == ".toml" or "/" in name:
        if p.is_file():
            return p
        raise SpecError(f"study file not found: {name}")
    local = (cwd or Path.cwd()) / "studies" / f"{name}.toml"
    if local.is_file():
        return local
    shipped = resources.files("h2s_studies") / f"{name}.toml"
    if shipped.is_file():
        return Path(str(shipped))
    known = sorted(f.name[:-5] for f in resources.files("h2s_studies").iterdir() if f.name.endswith(".toml"))
    raise SpecError(f"no study file for {name!r}: not a .toml path, not ./studies/{name}.toml, "
                    f"and not shipped (shipped: {', '.join(known)})")


def load_spec(name: str, cwd: Path | None = None) -> StudySpec:
    path = find_study_file(name, cwd)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file") from None
    spec = parse(raw, str(path))
    check_epoch_resources(spec)
    return spec
