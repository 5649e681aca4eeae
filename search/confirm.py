"""`confirm`: re-train a finished search's best configurations and the anchor over fresh seeds, scored on val
and test, as trials of a linked study `<study>.confirm` in the same storage.

A search picks its best trial on the validation split with one seed, which biases it low (the winner's
curse). The confirmation study holds (K + 1) x N enqueued runs: the top K COMPLETE trials by the study's
objective, with distinct parameters, and the anchor, each with N seeds that no search trial used. Its
runs train at the search's full budget with early stopping and no pruning, and are the only place the test
split is ever decoded. Any worker runs them (`worker --study capacity.confirm`), with every rule of a
search: heartbeats and retries, preemption, the exact budget. The statistics are `search.confirmation`'s.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from how2sign.data import DataError, PackedSplit, csv_path, load_split
from how2sign.device import mps_available, visible_gpus
from how2sign.jobs import DataChoice, choose_data

from . import launcher
from .confirmation import enqueued_pairs
from .errors import UserError
from .records import SEED, ConfirmConfig, ConfirmPlan, StudyRecord, TrialRecord, confirmation_name
from .spec import StudySpec, parse
from .storage import creation_lock, open_storage, parse_url, storage_errors
from .study import FingerprintMismatch, Opened, anchor_trials, create, load, load_stored, write_definition


def select(study: optuna.Study, spec: StudySpec, top: int) -> list[ConfirmConfig]:
    """The top `top` COMPLETE non-anchor trials by the study's objective, with distinct parameters (and not
    the anchor's), then the anchor. Fewer when fewer are distinct; none without a COMPLETE trial."""
    if spec.multi_objective:
        raise UserError(f"study {spec.name!r} has {len(spec.directions)} objectives; confirm ranks by one")
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    anchors = anchor_trials(study)
    anchor_numbers = {t.number for t in anchors}
    ranked = sorted((t for t in trials if t.number not in anchor_numbers and t.values),
                    key=lambda t: t.values[0] if spec.directions[0] == "minimize" else -t.values[0])
    if not ranked:
        raise UserError(f"study {spec.name!r} has no COMPLETE trial besides the anchor to confirm; run the search "
                        "first (h2s-search start)")
    seen = [_key(spec.anchor_params)] if spec.anchor_params else []
    chosen: list[ConfirmConfig] = []
    for t in ranked:
        if len(chosen) == top or _key(t.params) in seen:
            continue
        seen.append(_key(t.params))
        chosen.append(ConfirmConfig(t.number, False, dict(t.params)))
    if spec.anchor_name and anchors:
        chosen.append(ConfirmConfig(anchors[0].number, True, dict(spec.anchor_params)))
    return chosen


def _key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def fresh_seeds(study: optuna.Study, spec: StudySpec, n: int) -> list[int]:
    """The n smallest seeds above 0 that no search trial trained with (its [train] seed, or one it searched)."""
    used = {spec.base_config().seed} | {TrialRecord.read(t).seed for t in study.get_trials(deepcopy=False)}
    seeds, s = [], 1
    while len(seeds) < n:
        if s not in used:
            seeds.append(s)
        s += 1
    return seeds


def test_split(root: Path, where: str) -> PackedSplit:
    """The release's test split, packed; one line naming the missing file when the release has none."""
    path = csv_path(root, "test")
    if not path.is_file():
        raise DataError(f"{where}: the data at {root} has no test split: {path} does not exist; confirm scores "
                        "on the test split")
    return load_split(root, "test")


def confirmation_spec(parent: StudySpec, plan: ConfirmPlan, beam: int, test_fingerprint: str) -> StudySpec:
    """The confirmation study's definition: the search's [train] at its full budget, its space plus the seed,
    no pruning, no anchor of its own (its V4 runs carry anchor=true), and a [confirm] table."""
    raw = copy.deepcopy(parent.raw)
    for key in ("demo", "anchor", "timeout", "constraint"):
        raw.pop(key, None)
    raw.update(name=confirmation_name(parent.name), n_trials=plan.runs,
               description=f"Confirmation of {parent.name}: {len(plan.configs)} configurations x "
                           f"{len(plan.seeds)} seeds, scored on val and test",
               pruner={"type": "none"}, sampler={"type": "random", "seed": 0},
               confirm={"of": parent.name, "beam": beam, "test_fingerprint": test_fingerprint})
    raw["space"] = {**raw.get("space", {}), SEED: {"type": "categorical", "choices": list(plan.seeds)}}
    return parse(raw, f"confirmation of study {parent.name!r}")


def differences(stored: StudySpec, plan: ConfirmPlan, had: ConfirmPlan | None, beam: int) -> list[str]:
    """How an existing confirmation differs from the one asked for, in words; [] when they are the same."""
    out = []
    if stored.confirm.get("beam") != beam:
        out.append(f"--beam {stored.confirm.get('beam')} there, {beam} asked")
    if had is None:
        return out + ["it has no stored selection"]
    if had.top != plan.top:
        out.append(f"--top {had.top} there, {plan.top} asked")
    if had.seeds != plan.seeds:
        out.append(f"seeds {list(had.seeds)} there, {list(plan.seeds)} now")
    if [(c.trial, c.params) for c in had.configs] != [(c.trial, c.params) for c in plan.configs]:
        out.append(f"trials {[c.trial for c in had.configs]} there, {[c.trial for c in plan.configs]} now")
    return out


def ensure_confirmation(url: str, parent: Opened, spec: StudySpec, plan: ConfirmPlan) -> tuple[Opened, int]:
    """Create the confirmation study, or load it when it holds this very plan; then enqueue every (config,
    seed) run that has no trial yet (all of them once, the rest of them after a `confirm` killed part-way),
    under the study lock. Returns it and the number of runs enqueued now."""
    u = parse_url(url)
    with creation_lock(url, spec.name):
        storage = open_storage(url, cache=True)
        with storage_errors(u):
            try:
                storage.get_study_id_from_name(spec.name)
            except KeyError:
                study = create(storage, spec, parent.fingerprint, f"confirmation of {parent.spec.name}",
                               spec.n_trials, note=False, confirm=plan.attr())
                return Opened(study, spec, parent.fingerprint, True, False, url), _enqueue(study, plan, parent.spec)
            _complete_a_killed_creation(storage, spec, parent, plan)
            study, stored = load(storage, spec.name, parent.fingerprint, f"study {spec.name!r} in {u.masked}")
            _refuse_another(study, stored, spec, plan, u.masked)
            return Opened(study, stored, parent.fingerprint, False, False, url), _enqueue(study, plan, parent.spec)


def _complete_a_killed_creation(storage, spec: StudySpec, parent: Opened, plan: ConfirmPlan) -> None:
    """A `confirm` killed between creating the study and storing its selection left a study with no selection
    and no run: store this plan's definition there, as the creation would have."""
    study = optuna.load_study(study_name=spec.name, storage=storage)
    if StudyRecord.read(study).confirm is None and not study.get_trials(deepcopy=False):
        write_definition(study, spec, parent.fingerprint, f"confirmation of {parent.spec.name}", spec.n_trials,
                         note=False, confirm=plan.attr())


def _refuse_another(study: optuna.Study, stored: StudySpec, spec: StudySpec, plan: ConfirmPlan, where: str) -> None:
    """One line when the existing confirmation is not this plan; where the same --top, --seeds and --beam
    select other runs, the search has changed since, and the line says how to go on with the existing one."""
    attr = StudyRecord.read(study).confirm
    had = ConfirmPlan.from_attr(attr) if attr else None
    diff = differences(stored, plan, had, spec.confirm["beam"])
    if not diff:
        return
    head = f"study {spec.name!r} already exists with another selection ({'; '.join(diff)}); nothing was changed: "
    if had is not None and (had.top, len(had.seeds), stored.confirm.get("beam")) == (
            plan.top, len(plan.seeds), spec.confirm["beam"]):
        raise UserError(head + f"the search has changed since {spec.name!r} was created; to go on with that "
                        f"confirmation as it is, run h2s-search worker --study {spec.name} --storage {where} (or "
                        "confirm under another storage)")
    raise UserError(head + "run confirm with the same --top, --seeds and --beam, or confirm under another storage")


def _enqueue(study: optuna.Study, plan: ConfirmPlan, parent: StudySpec) -> int:
    """Seed by seed, every configuration that has no trial for that seed yet (an unfinished confirmation has
    the same seeds for every config). Each run carries its seed from the start, so a later call sees it."""
    have = enqueued_pairs(study)
    n = 0
    for seed in plan.seeds:
        for c in plan.configs:
            if (c.trial, seed) in have:
                continue
            record = TrialRecord(confirms_trial=c.trial, anchor=c.anchor, seed=seed,
                                 anchor_name=parent.anchor_name if c.anchor else None)
            study.enqueue_trial({**c.params, SEED: seed}, user_attrs=record.attrs())
            n += 1
    return n


def open_parent(storage: str | None, study: str, data: Path | None, say=print) -> tuple[Opened, DataChoice, str]:
    """The search study, the data (once the study is known to exist) and the fingerprint of its test split;
    refused when the data is not the study's or has no test split."""
    from how2sign.batches import TrainData

    parent = load_stored(storage, study, heartbeat=False)
    if parent.spec.is_confirmation:
        raise UserError(f"study {parent.spec.name!r} is itself a confirmation; confirm the search it belongs to "
                        f"({parent.spec.confirm['of']!r})")
    choice = choose_data(data)
    say(choice.describe())
    fingerprint = TrainData.load(choice.root).fingerprint
    if fingerprint != parent.fingerprint:
        raise FingerprintMismatch(f"data {choice.root} has fingerprint {fingerprint[:12]}, but study "
                                  f"{parent.spec.name!r} was run on {parent.fingerprint[:12]}; confirm on the "
                                  "search's data")
    return parent, choice, test_split(choice.root, f"study {parent.spec.name!r}").fingerprint


@dataclass
class ConfirmResult:
    parent: Opened
    opened: Opened        # the confirmation study
    enqueued: int         # runs enqueued by this call (0: it existed already)
    workers: int
    seconds: float
    exit_codes: list[int]


def run_confirm(study: str, *, top: int, seeds: int, storage: str | None, data: Path | None, workers: int | None,
                devices: str | None, workers_per_device: int | None, beam: int, checkpoint_dir: Path | None,
                artifact_dir: Path | None, say=print, progress=None) -> ConfirmResult:
    """Select, create the confirmation study once, and run local workers on it (none with workers=0)."""
    for flag, value in (("--top", top), ("--seeds", seeds), ("--beam", beam)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    parent, choice, test_fingerprint = open_parent(storage, study, data, say)
    plan = ConfirmPlan(parent.spec.name, top, tuple(fresh_seeds(parent.study, parent.spec, seeds)),
                       tuple(select(parent.study, parent.spec, top)))
    spec = confirmation_spec(parent.spec, plan, beam, test_fingerprint)
    devs = launcher.plan_devices(workers, devices, workers_per_device, visible_gpus(), mps_available(),
                                 os.cpu_count() or 1)
    asked = workers is not None or bool(devices) or workers_per_device is not None
    local = launcher.Plan(spec, choice, parent.url, launcher.sqlite_limit(devs, parent.url, asked=asked, say=say))
    opened, enqueued = ensure_confirmation(parent.url, parent, spec, plan)
    say(f"study {spec.name!r} {'created' if opened.created else 'loaded'}: {len(plan.configs)} configurations x "
        f"{len(plan.seeds)} seeds (seeds {list(plan.seeds)})" + (f", {enqueued} runs enqueued" if enqueued else ""))
    t0 = time.perf_counter()
    procs = launcher.spawn_workers(opened, local, local.devices, checkpoint_dir, artifact_dir, say)
    codes = launcher.supervise(opened, procs, progress)
    return ConfirmResult(parent, opened, enqueued, len(procs), time.perf_counter() - t0, codes)
