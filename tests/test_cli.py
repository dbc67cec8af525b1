"""The ``emd`` command's one error path, its exit statuses, and ``emd reproduce`` running real (tiny) notebooks.

The notebooks here are written into ``tmp_path``: a parameters cell and one or two cells, never the study's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from emdlib import cli
from emdlib.reproduce import (DeclaredType, NotebookError, declared_parameters, declared_type, parse_value,
                              reproduce, resolve_parameters)

ROOT = Path(__file__).resolve().parent.parent

PARAMS = '''preset = "x"
data_root = "."
results_root = "."
folder = "default"   # a folder name
count = 1
ratio = 0.5
flag = False
maybe = None         # type: Optional[int]  an optional count
items = None         # type: Optional[list[int]]
free = None          # no declared type
'''


def write_notebook(folder: Path, name: str, params: str, *cells: str) -> Path:
    """A notebook ``name`` with a cell tagged ``parameters`` and code ``cells``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p] + [nbformat.v4.new_code_cell(c) for c in cells]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m emdlib.cli ARGS`` in a fresh process (what a user's shell sees on stdout/stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "emdlib.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


# ------------------------------------------------------------------------------------------------ exit statuses
def test_help_documents_the_exit_statuses(capsys):
    for argv in (["--help"], ["prepare", "--help"], ["reproduce", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "exit status" in out
        for code in ("0", "1", "2", "3", "130"):
            assert f"\n  {code} " in out
    assert "-p NAME VALUE" in out and "declared in the parameters cell" in " ".join(out.split())


def test_unexpected_error_is_one_line_with_exit_1_and_traceback_only_with_v(tmp_path, monkeypatch, caplog, capsys):
    import emdlib.data.synth as synth

    def boom(*args, **kwargs):
        raise ZeroDivisionError("division by zero in the renderer")

    monkeypatch.setattr(synth, "build_synth_world", boom)
    with caplog.at_level(logging.DEBUG, logger="emdlib"):
        assert cli.main(["synth", "--out", str(tmp_path / "w")]) == cli.EXIT_FAILED
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "unexpected error: ZeroDivisionError: division by zero in the renderer (run `emd -v synth ...` for the "
        "traceback)"]
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.INFO)
    assert "Traceback" not in capsys.readouterr().err
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="emdlib"):
        assert cli.main(["-v", "synth", "--out", str(tmp_path / "w")]) == cli.EXIT_FAILED
    assert any(r.exc_info and r.levelno == logging.DEBUG for r in caplog.records)  # the traceback, at -v only


def test_input_errors_raised_during_the_work_exit_2_naming_the_file(tmp_path, caplog):
    """Library errors about bad input (here: a prepare root without splits) use the same path: one line, 2."""
    (tmp_path / "root").mkdir()
    with caplog.at_level(logging.ERROR, logger="emdlib"):
        code = cli.main(["prepare", "--root", str(tmp_path / "root"), "--cache", str(tmp_path / "cache")])
    assert code == cli.EXIT_USAGE
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert str(tmp_path / "root") in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------- reproduce: parameters
def test_declared_types_from_papermill_inference(tmp_path):
    nb = write_notebook(tmp_path, "00_p.ipynb", PARAMS)
    got = {n: str(p.type) for n, p in declared_parameters(nb).items()}
    assert got == {"preset": "str", "data_root": "str", "results_root": "str", "folder": "str", "count": "int",
                   "ratio": "float", "flag": "bool", "maybe": "Optional[int]", "items": "Optional[list[int]]",
                   "free": "any"}
    assert declared_type("List[str]", "None") == DeclaredType("list", True, "str")
    assert str(declared_type("Path", '"x"')) == "Path"  # not checkable: a value for it is refused, not guessed
    with pytest.raises(ValueError, match="'Path' is not one emd reproduce can check"):
        parse_value("x", declared_type("Path", '"x"'))


@pytest.mark.parametrize("text, declared, value", [
    ("2024", "str", "2024"), ("None", "str", "None"), (" a b ", "str", " a b "),
    ("7", "int", 7), ("-3", "int", -3), ("1e-3", "float", 0.001), ("2", "float", 2.0),
    ("yes", "bool", True), ("False", "bool", False), ("0", "bool", False),
    ("None", "Optional[int]", None), ("null", "Optional[int]", None), ("5", "Optional[int]", 5),
    ("[1, 2]", "Optional[list[int]]", [1, 2]), ('[["Face2Face", "c23"]]', "Optional[list]", [["Face2Face", "c23"]]),
    ("(1, 2)", "list", [1, 2]), ('{"a": 1}', "dict", {"a": 1}),
    ("2024", "any", "2024"), ("None", "any", None), ("[0, 1]", "any", [0, 1]),
])
def test_values_are_typed_by_the_declaration(text, declared, value):
    t = declared_type(declared if declared != "any" else None, "None" if declared == "any" else '""')
    got = parse_value(text, t)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text, declared, expected", [
    ("abc", "int", "expected an integer"), ("1.5", "int", "expected an integer"), ("true", "float", "number"),
    ("maybe", "bool", "expected true or false"), ("None", "int", "expected an integer"),
    ("[1, 'a']", "Optional[list[int]]", "item 'a' is not an int"), ("1", "list", "expected a list literal"),
    ("__import__('os').system('true')", "list", "expected a list literal"),
])
def test_bad_values_say_what_was_expected(text, declared, expected):
    with pytest.raises(ValueError, match=expected):
        parse_value(text, declared_type(declared, '""'))


def test_parameters_go_only_to_the_notebooks_that_declare_them(tmp_path):
    a = write_notebook(tmp_path, "00_a.ipynb", 'preset = "x"\nseed = 0\n')
    b = write_notebook(tmp_path, "01_b.ipynb", 'preset = "x"\nseed = None  # type: Optional[str]\nn = 3\n')
    per = resolve_parameters([a, b], {"seed": "12", "n": "4"})
    assert per == {"00_a.ipynb": {"seed": 12}, "01_b.ipynb": {"seed": "12", "n": 4}}
    assert resolve_parameters([a, b], values={"n": 5}) == {"00_a.ipynb": {}, "01_b.ipynb": {"n": 5}}
    with pytest.raises(ValueError, match=r"^parameter n='5': n is declared int in 01_b.ipynb \(default 3\); expected int, got str$"):
        resolve_parameters([a, b], values={"n": "5"})


# ------------------------------------------------------------------------------------------ reproduce: execution
def test_reproduce_injects_typed_values_and_reports_progress(tmp_path, caplog):
    nbs = tmp_path / "nbs"
    write_notebook(nbs, "00_params.ipynb", PARAMS,
                   "import json, pathlib\n"
                   "seen = {k: [v, type(v).__name__] for k, v in dict(folder=folder, count=count, ratio=ratio, "
                   "flag=flag, maybe=maybe, items=items, free=free).items()}\n"
                   "pathlib.Path(results_root, preset, 'seen.json').write_text(json.dumps(seen))")
    with caplog.at_level(logging.INFO, logger="emdlib"):
        code = cli.main(["reproduce", "--preset", "tiny", "--notebooks", str(nbs), "--results", str(tmp_path / "res"),
                         "--data-root", str(tmp_path / "data"), "-p", "folder", "2024", "-p", "count", "7",
                         "-p", "ratio", "1e-3", "-p", "flag", "yes", "-p", "maybe", "None", "-p", "items", "[1, 2]",
                         "-p", "free", "0042"])
    assert code == 0
    seen = json.loads((tmp_path / "res" / "tiny" / "seen.json").read_text())
    assert seen == {"folder": ["2024", "str"], "count": [7, "int"], "ratio": [0.001, "float"], "flag": [True, "bool"],
                    "maybe": [None, "NoneType"], "items": [[1, 2], "list"], "free": ["0042", "str"]}
    lines = [r.getMessage() for r in caplog.records if r.name == "emdlib.reproduce"]
    assert lines[0].startswith("[1/1] running 00_params.ipynb (preset tiny, folder='2024', count=7")
    assert lines[-1].startswith("[1/1] 00_params.ipynb done in ")


def test_failed_notebook_ends_with_one_line_and_keeps_the_executed_copy(tmp_path):
    nbs = tmp_path / "nbs"
    write_notebook(nbs, "00_ok.ipynb", 'preset = "x"\nresults_root = "."\n', "x = 1")
    write_notebook(nbs, "01_fails.ipynb", 'preset = "x"\nresults_root = "."\n',
                   "x = 1", "\n# the broken step\nraise ValueError('cells list is empty\\nsee the preset')", "x = 2")
    r = run_cli("reproduce", "--preset", "tiny", "--notebooks", str(nbs), "--results", "res", "--data-root", "d",
                cwd=tmp_path)
    assert r.returncode == 1
    # ours only: a kernel shutting down on a loaded machine may log "[IPKernelApp] ERROR | KeyboardInterrupt ..."
    errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln and not ln.startswith("[IPKernelApp]")]
    copy = tmp_path / "res" / "tiny" / "notebooks" / "01_fails.failed.ipynb"
    assert len(errors) == 1, r.stderr
    assert errors[0].endswith(
        "ERROR emdlib: 01_fails.ipynb failed in cell 3 of 4 (In [4], '# the broken step'): ValueError: cells list is "
        f"empty see the preset; partly executed copy: {copy}")
    # no traceback of ours or of the notebook's (a loaded machine sometimes gets one from jupyter's zmq event loop
    # while the failed kernel shuts down: that noise is not ours to silence)
    frames = [ln for ln in r.stderr.splitlines() if ln.strip().startswith('File "')]
    assert not [f for f in frames if "/zmq/" not in f and "/jupyter_client/" not in f and "/tornado/" not in f], r.stderr
    assert "ValueError: cells list is empty\n" not in r.stderr and "----" not in r.stderr
    assert "[1/2] 00_ok.ipynb done" in r.stderr and "[2/2] running 01_fails.ipynb" in r.stderr
    executed = nbformat.read(str(copy), as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert len(outputs) == 1 and outputs[0].ename == "ValueError"
    timings = json.loads((tmp_path / "res" / "tiny" / "timings.json").read_text())
    assert list(timings) == ["00_ok.ipynb"]  # the failed notebook has no time


def test_a_failed_rerun_keeps_the_last_good_executed_copy_and_its_time(tmp_path):
    nbs = tmp_path / "nbs"
    write_notebook(nbs, "00_step.ipynb", 'preset = "x"\nresults_root = "."\nfail = False\n',
                   "if fail:\n    raise RuntimeError('asked to fail')")
    args = ("reproduce", "--preset", "tiny", "--notebooks", str(nbs), "--results", "res", "--data-root", "d")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    out = tmp_path / "res" / "tiny" / "notebooks"
    good = (out / "00_step.ipynb").read_bytes()
    time_before = json.loads((tmp_path / "res" / "tiny" / "timings.json").read_text())
    r = run_cli(*args, "-p", "fail", "true", cwd=tmp_path)
    assert r.returncode == 1 and "partly executed copy: " + str(out / "00_step.failed.ipynb") in r.stderr
    assert (out / "00_step.ipynb").read_bytes() == good  # the good copy is untouched
    assert json.loads((tmp_path / "res" / "tiny" / "timings.json").read_text()) == time_before
    assert sorted(p.name for p in out.iterdir()) == ["00_step.failed.ipynb", "00_step.ipynb"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0  # a good run again removes the failed copy
    assert sorted(p.name for p in out.iterdir()) == ["00_step.ipynb"]


def test_notebook_error_message_is_one_line():
    e = NotebookError("05_x.ipynb", Path("r/05_x.ipynb"), "KeyError", "'cells'\n  more", cell=4, cells=9,
                      exec_count=3, first_line="run(cells)")
    assert str(e) == ("05_x.ipynb failed in cell 4 of 9 (In [3], 'run(cells)'): KeyError: 'cells' more; "
                      "partly executed copy: r/05_x.ipynb")
    assert str(NotebookError("a.ipynb", Path("o.ipynb"), "DeadKernelError", "Kernel died")) == \
        "a.ipynb failed: DeadKernelError: Kernel died; partly executed copy: o.ipynb"


def test_reproduce_api_checks_python_values_before_running(tmp_path):
    nbs = tmp_path / "nbs"
    write_notebook(nbs, "00_a.ipynb", 'preset = "x"\nseed = 0\n', "raise SystemError('must not run')")
    with pytest.raises(ValueError, match="seed is declared int"):
        reproduce("tiny", tmp_path / "d", tmp_path / "r", notebook_dir=nbs, extra_parameters={"seed": "1"})
    assert not (tmp_path / "r" / "tiny" / "notebooks" / "00_a.ipynb").exists()


def test_progress_lines_pass_on_the_notebooks_own_log_lines(caplog) -> None:
    """emd reproduce shows which run and epoch a notebook is at: the kernel's emdlib log lines, as they come."""
    import logging

    from emdlib.reproduce import ProgressLines

    stream = ProgressLines("02_emd_training.ipynb")
    with caplog.at_level(logging.INFO, logger="emdlib.reproduce"):
        stream.write("INFO emdlib.study.experiments: EMD on Face2")
        stream.write("face c23\nepoch 1/7:  50%|#####     | 5/10\r\x1b[32mWARNING emdlib.train: slow\x1b[0m\n")
        stream.write("Traceback (most recent call last):\nINFO papermill: not ours\nINFO emdlib.train: epoch 1/7 full")
        stream.flush()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "  02_emd_training.ipynb: EMD on Face2face c23"), ("WARNING", "  02_emd_training.ipynb: slow"),
        ("INFO", "  02_emd_training.ipynb: epoch 1/7 full")]
