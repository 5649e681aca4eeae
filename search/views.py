"""Rich views of a study summary, and the optuna-dashboard server."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table

from .summary import comparison_lines, time_line

STATE_ORDER = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")


def status_view(s: dict):
    states = Table(title=f"study {s['study']}  ({s['counted']}/{s['budget']} trials of the budget)", show_edge=False)
    for name in STATE_ORDER:
        states.add_column(name.lower(), justify="right")
    states.add_row(*(str(s["states"].get(n, 0)) for n in STATE_ORDER))
    parts = [states]
    if s["running"]:
        run = Table(title="running", show_edge=False)
        slurm = any(r.get("slurm_job_id") for r in s["running"])  # the column only where a trial runs in Slurm
        for col in ("trial", "host", *(("slurm job",) if slurm else ()), "device", "epochs", "for"):
            run.add_column(col)
        for r in s["running"]:
            secs = r["running_seconds"]
            job = (str(r.get("slurm_job_id") or "-"),) if slurm else ()
            run.add_row(f"{r['number']}{' (anchor)' if r['anchor'] else ''}", str(r["host"] or "-"), *job,
                        str(r["device"] or "-"), _progress(r), "-" if secs is None else f"{secs:.0f}s")
        parts.append(run)
    lines = comparison_lines(s)[1:]
    parts.extend(lines or ["no completed trial yet"])
    time = time_line(s["time"]) if "time" in s else None
    if time:
        parts.append(time)
    if "confirmation" in s:  # `confirm` has created <study>.confirm
        parts.append(s["confirmation"]["line"])
    return Group(*parts)


def _progress(r: dict) -> str:
    """A running trial's finished epochs, or the train clips it has seen where its steps count them."""
    return f"{r['clips_seen']:,} clips" if r.get("clips_seen") else str(r["epochs_run"] or 0)


def serve_dashboard(storage: str | None, host: str, port: int, artifacts: Path | None, say=print) -> None:
    """optuna-dashboard on our storage, with the artifact store the workers upload to."""
    from optuna_dashboard import run_server

    from .storage import StorageError, open_storage, parse_url, resolve_url

    url = resolve_url(storage)
    u = parse_url(url)
    if u.missing_file:  # opening it would create an empty database, and serve it
        raise StorageError(f"no database at {u.masked}: the file {u.sqlite_file} does not exist; give the "
                           "--storage the studies are in, or create one with h2s-search start")
    rdb = open_storage(url, heartbeat=False)
    kw = {}
    store = artifact_store(artifacts)
    if store is not None:
        kw["artifact_store"] = store
        from .artifacts import artifact_root

        say(f"artifacts (learning curves, translations, metrics.json) from {artifact_root(artifacts)}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        say(f"warning: optuna-dashboard has no authentication and is now reachable on {host}")
    say(f"optuna-dashboard for {u.masked} at http://{host}:{port}/ (Ctrl-C to stop)")
    run_server(rdb, host=host, port=port, **kw)


def artifact_store(folder: Path | None):
    """The store the workers upload to: --artifacts, then $H2S_ARTIFACTS, then ./h2s-artifacts (created)."""
    from .artifacts import open_store

    return open_store(folder)
