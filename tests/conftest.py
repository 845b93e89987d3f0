import os
import threading
import time
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`: three test processes share two cores, with their daemons:
    # one OpenMP thread each (set before torch is imported; the daemons inherit it). Two threads each spun on cores
    # the others needed: the suite took 251 s of wall and 8 min of CPU, with one thread 180 s and 5.5 min.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from monitor.extras import has_torch
from monitor.model.defects import DefectConfig
from monitor.model.model import Model
from monitor.model.scorers import PatchDictionaryConfig
from monitor.model.synth import defective_image, fiber_mat
from monitor.model.threshold import ThresholdConfig

ROOT = Path(__file__).resolve().parent.parent
NANOTWICE = ROOT.parent / "shared" / "data" / "nanotwice"
SHAPE = (256, 320)

# the Prometheus, promtool, Alertmanager and amtool that `make tools` unpacks (never installs) into .tools/
os.environ["PATH"] = f"{ROOT / '.tools' / 'root' / 'usr' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"

# small and fast, same code path as the default: real pretrained weights, dense mode. 3x3 aggregation as in the
# demo: on the synthetic mats it separates defects from clean images far better than the NanoTWICE default's none
# (bench: median defect/clean coverage ratio 87 vs 7.7), while on real SEM images none is better (README)
SMALL = PatchDictionaryConfig(k=512, aggregate=3, coarse_words=128)  # the coarse search on, as by default
# the synthetic mats' ends are clipped already (over 5% of their pixels at 0 and at 1): the default 15%/85% clip of
# the normalisation (model.clip) would cut into the fibres themselves, so the test models clip nothing
SYNTH_CLIP = (0.0, 1.0)


# The suite runs twice in `make test`: whole on the full install, and its scoring and daemon tests on the line PC's
# install (no torch: `pip install .`), where the small model comes fitted by the full install (tests/slim_model.py,
# MONITOR_TEST_MODEL) and the tests that fit are skipped.
FIT = has_torch()
needs_fit = pytest.mark.skipif(not FIT, reason="fits a model: needs the fitting extra (torch)")


def fit_small() -> Model:
    return Model.fit("patch_dictionary", SMALL, [fiber_mat(SHAPE, seed=i) for i in range(8)],
                     [fiber_mat(SHAPE, seed=100 + i) for i in range(2)], ThresholdConfig(), DefectConfig(),
                     device="cpu", clip=SYNTH_CLIP)


def fit_other() -> Model:
    """A second model, other than ``fit_small``'s (install-model, rollback)."""
    return Model.fit("patch_dictionary", PatchDictionaryConfig(k=256), [fiber_mat(SHAPE, seed=i) for i in range(4)],
                     [fiber_mat(SHAPE, seed=100 + i) for i in range(2)], device="cpu", clip=SYNTH_CLIP)


def _fitted_elsewhere(name: str) -> Path:
    d = Path(os.environ.get("MONITOR_TEST_MODEL", "/nonexistent")) / name
    if not (d / "model.json").is_file():
        pytest.fail("this installation cannot fit (no torch): set MONITOR_TEST_MODEL to the models that "
                    "`python -m tests.slim_model DIR` fits on the full install (make test does)")
    return d


@pytest.fixture(scope="session")
def normal_images():
    return [fiber_mat(SHAPE, seed=i) for i in range(8)]


@pytest.fixture(scope="session")
def val_images():
    return [fiber_mat(SHAPE, seed=100 + i) for i in range(2)]


@pytest.fixture(scope="session")
def fitted_model():
    return fit_small() if FIT else Model.load(_fitted_elsewhere("small"), "cpu")


@pytest.fixture(scope="session")
def saved_model(fitted_model, tmp_path_factory):
    if not FIT:
        return _fitted_elsewhere("small")
    d = tmp_path_factory.mktemp("model") / "m"
    fitted_model.save(d)
    return d


@pytest.fixture(scope="session")
def other_model(tmp_path_factory):
    if not FIT:
        return _fitted_elsewhere("other")
    d = tmp_path_factory.mktemp("model") / "other"
    fit_other().save(d)
    return d


@pytest.fixture
def defect_sample():
    return defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=7)



def _children() -> set[int]:
    """Live child processes of this process (from /proc: every thread's children)."""
    pids = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            pass
    return pids


@pytest.fixture(autouse=True)
def _leaves_nothing_behind():
    """A test that leaves a thread or a child process running fails: a leaked daemon or observer would make later
    tests (and CI) depend on what ran before, and a real line's monitor must stop cleanly."""
    threads, children = set(threading.enumerate()), _children()
    yield
    deadline = time.monotonic() + 5  # threads and processes being stopped get a moment to end

    def leaked():
        t = [th for th in threading.enumerate() if th not in threads and th.is_alive()]
        return t, sorted(_children() - children)

    t, c = leaked()
    while (t or c) and time.monotonic() < deadline:
        time.sleep(0.05)
        t, c = leaked()
    for pid in c:  # reap what can be reaped, so one leak does not fail every later test too
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    assert not t and not c, f"left running: threads {[th.name for th in t]}, child processes {c}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Captured output and logs as valid UTF-8: a test of file names that are not UTF-8 logs them with surrogate
    escapes, which pytest-xdist cannot send from its worker processes (it would crash the run)."""
    outcome = yield
    rep = outcome.get_result()
    rep.sections = [(title, text.encode("utf-8", "backslashreplace").decode("utf-8")) for title, text in rep.sections]


@pytest.fixture
def new_daemon(tmp_path, saved_model):
    """Daemons on the suite's small model, stopped at the end: ``new_daemon(process=False, **sections)``."""
    from tests.daemon import Daemon, InProcessDaemon

    started = []

    def make(process: bool = False, **sections) -> "Daemon":
        """In this process unless the test is about the process (signals, exit codes, a second process)."""
        d = (Daemon if process else InProcessDaemon)(tmp_path / f"d{len(started)}", saved_model, **sections)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.alive():
            d.stop()


@pytest.fixture
def guarded():
    """A GuardedServer (the results page's and the metrics endpoint's) answering "ok", with short bounds."""
    from http.server import BaseHTTPRequestHandler

    from monitor.web.server import GuardedServer

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    servers = []

    def make(**bounds) -> int:
        server = GuardedServer(("127.0.0.1", 0), Ok, name="test", **bounds)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    make.servers = servers
    yield make
    for s in servers:
        s.shutdown()
        s.server_close()
