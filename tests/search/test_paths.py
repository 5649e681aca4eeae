"""Names are not paths: a study name that would make a path is refused wherever it comes from (a study
file, the shared database, --study), and every folder built from a name or a trial number stays inside its
root. Also: commands that only read a study neither write the built-in corpus nor create a database file."""

from __future__ import annotations

import optuna
import pytest
from typer.testing import CliRunner

from search.cli import app
from search.paths import MAX_NAME, UnsafePath, check_name, inside
from search.tiny_study import tiny_study_toml

runner = CliRunner()
BAD_NAMES = ["../../evil", "a/b", "/abs", "..", ".hidden", "x\x00y", "a" * (MAX_NAME + 1), "", "a..b", "tab\tname"]


def assert_user_error(res, *needles):
    assert res.exit_code == 2, res.output
    text = res.stderr.strip()
    assert "Traceback" not in res.output and len(text.splitlines()) == 1 and text.startswith("error: "), text
    for n in needles:
        assert n in text, text


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_would_make_a_path_is_refused(name):
    with pytest.raises(UnsafePath, match="here"):
        check_name(name, "here")


@pytest.mark.parametrize("name", ["capacity", "capacity.confirm", "frozen-encoder", "V4_2", "a+b", "a" * MAX_NAME])
def test_plain_names_pass(name):
    assert check_name(name, "here") == name


def test_inside_refuses_anything_that_resolves_outside_its_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert inside(root, "study", "trial-00001") == (root / "study" / "trial-00001").resolve()
    (root / "link").symlink_to(tmp_path)
    for parts in (("..", "evil"), ("/etc",), ("link", "escape"), ("study/../../x",)):
        with pytest.raises(UnsafePath, match="outside"):
            inside(root, *parts)


@pytest.mark.parametrize("name", ["../../evil", "a/b", "x" * 300])
def test_start_refuses_a_study_file_whose_name_is_a_path(tmp_path, name):
    path = tmp_path / "evil.toml"
    path.write_text(tiny_study_toml(name.replace("\\", "\\\\")))
    db = tmp_path / "s.db"
    res = runner.invoke(app, ["start", "--study", str(path), "--storage", f"sqlite:///{db}", "--workers", "0"])
    assert_user_error(res, "name")
    assert not (tmp_path.parent / "evil").exists() and not db.exists()


def test_a_study_in_the_database_whose_name_is_a_path_is_refused_by_workers(tmp_path, corpus):
    """Whoever can write a study into the shared database must not pick where the workers write."""
    import tomllib

    db = tmp_path / "s.db"
    raw = tomllib.loads(tiny_study_toml("fine"))
    study = optuna.create_study(study_name="fine", storage=f"sqlite:///{db}")
    study.set_user_attr("spec", {**raw, "name": "../../evil"})
    study.set_user_attr("fingerprint", "0" * 64)
    res = runner.invoke(app, ["worker", "--study", "fine", "--storage", f"sqlite:///{db}", "--data", str(corpus)])
    assert_user_error(res, "'../../evil'")
    assert not (tmp_path.parent.parent / "evil").exists()


def test_worker_and_status_on_a_missing_sqlite_file_leave_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["worker"], ["status"], ["best"], ["report"]):
        res = runner.invoke(app, [*args, "--study", "capacity", "--storage", "sqlite:///nothing.db"])
        assert_user_error(res, "nothing.db", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_worker_without_data_checks_the_study_before_writing_the_built_in_corpus(tmp_path, monkeypatch):
    import how2sign.synthetic as synthetic

    def never(*_a, **_k):
        raise AssertionError("the built-in corpus was written before the study was found")

    monkeypatch.setattr(synthetic, "write_corpus", never)
    db = tmp_path / "s.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    res = runner.invoke(app, ["worker", "--study", "capacity", "--storage", f"sqlite:///{db}"])
    assert_user_error(res, "no study 'capacity'", "other")


def test_study_given_as_a_file_is_looked_up_by_its_name(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(tiny_study_toml("named-in-file"))
    db = tmp_path / "s.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    res = runner.invoke(app, ["status", "--study", str(path), "--storage", f"sqlite:///{db}"])
    assert_user_error(res, "no study 'named-in-file'")
