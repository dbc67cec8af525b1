"""prepare's worker processes die with their parent, even when the parent is killed with SIGKILL (kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 60.0  # an upper bound for the kernel / the watchdog to end the orphans, not a timing assertion

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process states from /proc")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead: it executes nothing and holds no files)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def _wait_gone(pids: list[int]) -> list[int]:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _start(script: str, path: Path | None = None) -> tuple[subprocess.Popen, list[int]]:
    """Run ``script`` in a parent process; it prints its children's pids on one line, then waits."""
    extra = [str(ROOT)] + ([str(path)] if path else []) + [os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(extra)}
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT)
    line = parent.stdout.readline()
    assert line.strip(), f"parent exited early (rc {parent.poll()})"
    return parent, [int(p) for p in line.split()]


def _kill9(parent: subprocess.Popen, children: list[int]) -> None:
    try:
        assert all(_alive(p) for p in children)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        left = _wait_gone(children)
    finally:
        for p in children:  # never leave a process behind, even when the test fails
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    assert left == [], f"worker processes {left} outlived their killed parent"


def test_prepare_pool_workers_die_when_prepare_is_killed(tmp_path):
    """The real pool of ``prepare(workers=2)``, both workers busy in a task (so their initializer has run), parent
    killed with SIGKILL."""
    (tmp_path / "busy.py").write_text(textwrap.dedent("""
        import os, time
        def mark_and_sleep(folder):
            open(os.path.join(folder, str(os.getpid())), "w").close()
            time.sleep(600)
    """))
    started = tmp_path / "started"
    started.mkdir()
    parent, workers = _start(f"""
        import os, time
        from busy import mark_and_sleep
        from emdlib.data.prepare import worker_pool
        pool = worker_pool(2)
        futures = [pool.submit(mark_and_sleep, {str(started)!r}) for _ in range(2)]
        while len(os.listdir({str(started)!r})) < 2:
            time.sleep(0.05)
        print(*os.listdir({str(started)!r}), flush=True)
        time.sleep(600)
    """, tmp_path)
    assert len(workers) == 2
    # every process the parent started (the two workers, and multiprocessing's resource tracker if any)
    children = _children(parent.pid)
    assert set(workers) <= set(children)
    _kill9(parent, children)


@pytest.mark.parametrize("use_prctl", [True, False], ids=["prctl", "watchdog"])
def test_die_with_parent_methods(use_prctl, tmp_path):
    """Each of the two mechanisms on its own: a child that called ``die_with_parent`` ends when its parent is
    killed with SIGKILL."""
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(f"""
        import os, time
        from emdlib.data.prepare import die_with_parent
        method = die_with_parent(os.getppid(), use_prctl={use_prctl}, interval_s=0.1)
        assert method == {"prctl" if use_prctl else "watchdog"!r}, method
        print("ready", flush=True)
        time.sleep(600)
    """))
    parent, (pid,) = _start(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, {str(child)!r}], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    _kill9(parent, [pid])


def test_a_worker_imports_no_torch():
    """What a spawned prepare worker imports (the prepare module, to unpickle its jobs, and the crop encoders) leaves
    torch out: importing it costs each worker seconds of start-up on a loaded machine, and a worker never needs it."""
    code = ("import sys, numpy as np, emdlib.data.prepare as p\n"
            "from emdlib.data.crop_codec import encode_crops\n"
            "p.entry_paths('/c', 'c23', 'original', '000', 'jpeg'); encode_crops([np.zeros((8, 8, 3), np.uint8)], 'jpeg')\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
