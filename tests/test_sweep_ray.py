"""Tests for gdlab.sweep's Ray executor on a local Ray instance that the tests start themselves on
127.0.0.1 (no network beyond loopback): the same results and the same store as a local run, and a
worker killed mid-sweep loses nothing and recomputes nothing. Skipped when Ray is not installed."""
import os
import signal
import threading
import time

import pytest
import torch

# Ray binds to the loopback address only when it thinks it is not forming a cluster: set before importing it
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
ray = pytest.importorskip("ray")

from gdlab import sweep  # noqa: E402
from gdlab.data import gaussian_mixture  # noqa: E402
from gdlab.sweep import MLPPoint, run_sweep  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    for attempt in range(3):  # on an overloaded machine the raylet can miss Ray's 30 s startup deadline
        try:
            ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                     configure_logging=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
            break
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for a startup timeout
            ray.shutdown()
            if "timed out during startup" not in str(e) or attempt == 2:
                if "timed out during startup" in str(e):
                    pytest.skip(f"a local Ray instance could not start here: {e}")
                raise
    yield ray
    ray.shutdown()


def data():
    return gaussian_mixture(200, 6, 4, torch.Generator().manual_seed(0), n_test=50)


def points(epochs=3, n=4):
    return [MLPPoint(width=4 + 3 * i, seed=i, epochs=epochs, batch_size=10, label_noise=0.1) for i in range(n)]


def journal(store):
    return sweep.Store(store).read_journal()


def assert_same(a, b, tol):
    assert a.key == b.key and a.epochs == b.epochs
    for f in ("train_loss", "train_error", "test_loss", "test_error"):
        assert max(abs(u - v) for u, v in zip(getattr(a, f), getattr(b, f))) <= tol, f


def test_ray_and_local_runs_fill_one_store(local_ray, tmp_path):
    pts, d = points(), data()
    on_ray = run_sweep(pts[:3], d, tmp_path, dtype="float64", executor="ray", show_progress=False)
    trained_on_ray = {k for e in journal(tmp_path) if e["event"] == "start" for k in e["keys"]}
    assert trained_on_ray == {r.key for r in on_ray}
    assert all(e["pid"] != os.getpid() for e in journal(tmp_path) if e["event"] == "start")  # in workers
    local = run_sweep(pts, d, tmp_path, dtype="float64", show_progress=False)  # reads 3, trains 1 here
    here = [e for e in journal(tmp_path) if e["event"] == "start" and e["pid"] == os.getpid()]
    assert [k for e in here for k in e["keys"]] == [local[3].key]
    fresh = run_sweep(pts, d, None, dtype="float64", show_progress=False)
    for a, b in zip(local, fresh):
        assert_same(a, b, 1e-10)
    again = run_sweep(pts, d, tmp_path, dtype="float64", executor="ray", show_progress=False)  # all read back
    assert len([e for e in journal(tmp_path) if e["event"] == "start"]) == 4
    for a, b in zip(again, fresh):
        assert_same(a, b, 1e-10)


def test_a_killed_worker_loses_nothing_and_recomputes_nothing(local_ray, tmp_path):
    """SIGKILL the worker of a group in training after two groups are saved: Ray retries the task,
    which resumes the group from its checkpoint; finished entries are neither retrained nor rewritten."""
    pts, d = points(epochs=30, n=5), data()
    killed, saved_before = {}, {}

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline:
            events = journal(tmp_path)
            done = {g for e in events if e["event"] == "done" for g in [e["group"]]}
            running = {e["group"]: e["pid"] for e in events if e["event"] == "checkpoint" and e["group"] not in done}
            if len(done) >= 2 and running:
                group, pid = next(iter(running.items()))
                saved_before.update({f.stem: f.stat().st_mtime_ns for f in tmp_path.glob("*.json")})
                killed.update(group=group, pid=pid)
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    results = run_sweep(pts, d, tmp_path, dtype="float64", executor="ray", max_group_size=1, checkpoint_every=0,
                        ray_options={"num_cpus": 1, "max_retries": 3}, show_progress=False)
    watcher.join(timeout=5)
    assert killed, "no group was in training after two were saved: nothing was killed"
    events = journal(tmp_path)
    starts = [k for e in events if e["event"] == "start" for k in e["keys"]]
    assert sorted(starts) == sorted(r.key for r in results)  # every point started once: nothing recomputed
    resumed = [e for e in events if e["event"] == "resume"]
    assert [e["group"] for e in resumed] == [killed["group"]] and resumed[0]["pid"] != killed["pid"]
    assert resumed[0]["epoch"] >= 1
    assert all((tmp_path / f"{k}.json").stat().st_mtime_ns == t for k, t in saved_before.items())
    fresh = run_sweep(pts, d, None, dtype="float64", show_progress=False)
    for a, b in zip(results, fresh):  # nothing lost, nothing wrong
        assert_same(a, b, 1e-10)


def test_ray_runs_a_general_model_sweep(local_ray):
    """A vmapped group of a torch.nn model (picklable factory) trained as a Ray task."""
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    factory = sweep.models.MLP  # importable by the workers
    pts = sweep.grid(width=[2, 5], in_dim=5, out_dim=3, seed=[0, 1], lr=0.1, momentum=0.9, batch_size=10, epochs=2)
    a = sweep.run(factory, torch.nn.functional.cross_entropy, (x, y), pts, dtype="float64", executor="ray",
                  show_progress=False)
    b = sweep.run(factory, torch.nn.functional.cross_entropy, (x, y), pts, dtype="float64", show_progress=False)
    for ra, rb in zip(a, b):
        assert ra.key == rb.key
        assert max(abs(u - v) for u, v in zip(ra.train_loss, rb.train_loss)) <= 1e-10
