"""Tests for gdlab.sweep: the batched engine equals separate training, the store is keyed and
atomic, and a sweep killed mid-run resumes without recomputing finished points."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdlab import sweep
from gdlab.data import gaussian_mixture
from gdlab.sweep import MLPPoint, run_sweep, train_one
from gdlab.sweep.mlp import MLPFamily


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_data(n=80, n_test=40, dim=6, classes=4, seed=0):
    return gaussian_mixture(n, dim, classes, torch.Generator().manual_seed(seed), n_test=n_test)


def assert_same(a, b, tol):
    assert a.epochs == b.epochs
    for field in ("train_loss", "train_error", "test_loss", "test_error"):
        diff = max(abs(u - v) for u, v in zip(getattr(a, field), getattr(b, field)))
        assert diff <= tol, (field, diff)


def test_batched_engine_equals_separate_training_float64():
    """Padded units stay exactly zero: every model of a padded group follows its own trajectory."""
    data = small_data()
    points = [MLPPoint(width=3, seed=0, epochs=2, batch_size=32, label_noise=0.2),
              MLPPoint(width=9, seed=1, epochs=2, batch_size=32, lr=0.05, momentum=0.5),
              MLPPoint(width=17, seed=2, epochs=2, batch_size=32, weight_decay=1e-2, label_noise=0.1),
              MLPPoint(width=17, seed=2, depth=1, epochs=2, batch_size=32)]
    batched = run_sweep(points, data, None, dtype="float64", group_overhead=1e9, show_progress=False)
    for point, result in zip(points, batched):
        assert result.point == point
        assert_same(result, train_one(point, data, dtype="float64"), 1e-10)


@settings(max_examples=8, deadline=None)
@given(widths=st.lists(st.integers(1, 12), min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_result_does_not_depend_on_the_group(widths, seed):
    data = small_data(n=40, n_test=20)
    points = [MLPPoint(width=w, seed=seed + i, epochs=2, batch_size=16) for i, w in enumerate(widths)]
    together = run_sweep(points, data, None, dtype="float64", group_overhead=1e9, show_progress=False)
    alone = run_sweep(points, data, None, dtype="float64", max_group_size=1, show_progress=False)
    for a, b in zip(together, alone):
        assert_same(a, b, 1e-12)


def test_float32_engine_close_to_loop():
    data = small_data()
    point = MLPPoint(width=8, seed=4, epochs=2, batch_size=40, label_noise=0.1)
    (batched,) = run_sweep([point, MLPPoint(width=20, epochs=2, batch_size=40)], data, None, show_progress=False)[:1]
    assert_same(batched, train_one(point, data), 1e-4)


def trained_keys(store):
    """Keys of the points whose training started (from the store's journal)."""
    return [k for e in sweep.Store(store).read_journal() if e["event"] == "start" for k in e["keys"]]


def test_keys_are_stable_and_distinct():
    data = small_data()
    fp = sweep.data_fingerprint(data)
    p = MLPPoint(width=5, seed=1)
    assert p.key(fp) == MLPPoint(width=5, seed=1).key(fp)
    assert p.key(fp) != MLPPoint(width=5, seed=2).key(fp)
    assert p.key(fp) != MLPPoint(width=5, seed=1, lr=0.02).key(fp)
    assert p.key(fp) != p.key(sweep.data_fingerprint(small_data(seed=1)))
    # the key covers the dtype and the device type (issue 15)
    assert len({p.key(fp), p.key(fp, "float64"), p.key(fp, device="cuda"), p.key(fp, "float64", "cuda:1")}) == 4
    assert p.key(fp, device="cuda:0") == p.key(fp, device="cuda:1")


def test_a_float32_entry_is_not_used_for_a_float64_request(tmp_path):
    data = small_data()
    points = [MLPPoint(width=4, epochs=2, batch_size=40)]
    (r32,) = run_sweep(points, data, tmp_path, show_progress=False)
    (r64,) = run_sweep(points, data, tmp_path, dtype="float64", show_progress=False)
    assert r32.key != r64.key and len(trained_keys(tmp_path)) == 2
    assert_same(r64, train_one(points[0], data, dtype="float64"), 1e-12)
    assert r32.train_loss != r64.train_loss


def test_store_roundtrip_atomic_and_corrupt_entries_are_recomputed(tmp_path):
    """A torn entry, bytes that are not UTF-8, a directory in an entry's place and an entry of
    another point are each recomputed (and replaced), never used or fatal."""
    data = small_data()
    points = [MLPPoint(width=w, epochs=2, batch_size=40) for w in (2, 4, 6, 8, 10)]
    first = run_sweep(points, data, tmp_path, show_progress=False)
    files = {r.key: tmp_path / f"{r.key}.json" for r in first}
    assert len(list(tmp_path.glob("*.json"))) == 5 and not list(tmp_path.glob(".*.tmp"))
    k = [r.key for r in first]
    files[k[0]].write_text(files[k[0]].read_text()[:40])              # torn / truncated
    files[k[1]].write_bytes(b"\xff\xfe\x00garbage\x9c")                  # not UTF-8
    files[k[2]].unlink()
    files[k[2]].mkdir()                                                  # a directory in its place
    (files[k[2]] / "inside").write_text("x")
    files[k[3]].write_text(files[k[4]].read_text())                     # another point's entry
    for key in k[:4]:
        assert sweep.load_result(tmp_path, key) is None or key == k[3]
    start = len(trained_keys(tmp_path))
    again = run_sweep(points, data, tmp_path, show_progress=False)
    assert sorted(trained_keys(tmp_path)[start:]) == sorted(k[:4])   # exactly the bad ones
    for a, b in zip(first, again):
        assert a.point == b.point and a.key == b.key
        assert_same(a, b, 0.0)
    for key, p in zip(k, points):
        entry = json.loads(files[key].read_text())
        assert entry["key"] == key and MLPPoint(**entry["result"]["point"]) == p
    assert sweep.load_result(tmp_path, k[0]).point == points[0]


def test_an_entry_is_checked_against_the_requested_point(tmp_path):
    data = small_data()
    a, b = MLPPoint(width=3, epochs=1, batch_size=40), MLPPoint(width=5, epochs=1, batch_size=40)
    (ra,) = run_sweep([a], data, tmp_path, show_progress=False)
    fp = sweep.data_fingerprint(data)
    # plant a's entry under b's key, as a hash collision or a hand-copied file would
    (tmp_path / f"{b.key(fp)}.json").write_text((tmp_path / f"{ra.key}.json").read_text())
    assert sweep.load_result(tmp_path, b.key(fp), b.spec(fp)) is None
    (rb,) = run_sweep([b], data, tmp_path, show_progress=False)
    assert rb.point == b and b.key(fp) in trained_keys(tmp_path)
    assert_same(rb, train_one(b, data), 1e-5)


def test_stale_temporary_files_are_cleaned(tmp_path):
    data = small_data()
    stale, fresh = tmp_path / ".abc.1234.tmp", tmp_path / ".def.5678.tmp"
    tmp_path.mkdir(exist_ok=True)
    stale.write_text("half a write")
    fresh.write_text("a write in progress")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    run_sweep([MLPPoint(width=3, epochs=1, batch_size=40)], data, tmp_path, show_progress=False)
    assert not stale.exists() and fresh.exists()


def test_finished_points_are_read_not_recomputed(tmp_path):
    data = small_data()
    points = [MLPPoint(width=w, epochs=1, batch_size=40) for w in (2, 3, 4)]
    first = run_sweep(points[:2], data, tmp_path, show_progress=False)
    assert sorted(trained_keys(tmp_path)) == sorted(r.key for r in first)
    all3 = run_sweep(points, data, tmp_path, show_progress=False)
    assert trained_keys(tmp_path)[2:] == [all3[2].key]


SWEEP_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from gdlab.data import gaussian_mixture
    from gdlab.sweep import MLPPoint, run_sweep
    data = gaussian_mixture(200, 6, 4, torch.Generator().manual_seed(0), n_test=50)
    points = [MLPPoint(width=8 + i, seed=i, epochs=int(sys.argv[2]), batch_size=10) for i in range(int(sys.argv[3]))]
    run_sweep(points, data, sys.argv[1], max_group_size=int(sys.argv[4]), checkpoint_every=0,
              dtype="float64", show_progress=False)
""")


def run_and_kill(tmp_path, store, until, *args):
    """Start the sweep script and SIGKILL it as soon as ``until(store)`` holds."""
    script = tmp_path / "sweep_script.py"
    script.write_text(SWEEP_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(store), *map(str, args)])
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not until(store) and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"


def test_killed_sweep_resumes_without_recomputing(tmp_path):
    """SIGKILL a sweep after its first groups are stored; the rerun trains only the rest (the group
    in training resumes from its checkpoint), and the finished entries are neither rewritten nor lost."""
    store = tmp_path / "store"
    num_points, epochs = 8, 6
    run_and_kill(tmp_path, store, lambda s: len(list(s.glob("*.json"))) >= 2, epochs, num_points, 1)
    done = {f.stem: f.stat().st_mtime_ns for f in store.glob("*.json")}
    assert 2 <= len(done) < num_points
    started = len(trained_keys(store))

    data = gaussian_mixture(200, 6, 4, torch.Generator().manual_seed(0), n_test=50)
    points = [MLPPoint(width=8 + i, seed=i, epochs=epochs, batch_size=10) for i in range(num_points)]
    resumed = run_sweep(points, data, store, max_group_size=1, dtype="float64", show_progress=False)
    fp = sweep.data_fingerprint(data)
    keys = [p.key(fp, "float64") for p in points]
    retrained = trained_keys(store)[started:]
    assert not set(retrained) & set(done)
    resumed_groups = [e for e in sweep.Store(store).read_journal() if e["event"] == "resume"]
    assert len(retrained) + sum(len(e["keys"]) for e in resumed_groups) == num_points - len(done)
    assert all((store / f"{k}.json").stat().st_mtime_ns == t for k, t in done.items())
    assert sorted(f.stem for f in store.glob("*.json")) == sorted(keys)
    assert not list((store / ".partial").glob("*.pt"))
    for r in resumed:  # nothing lost, nothing wrong: every point equals a fresh computation
        assert_same(r, train_one(r.point, data, dtype="float64"), 1e-10)


def test_a_group_killed_mid_training_resumes_from_its_checkpoint_exactly(tmp_path):
    """One batched group of 4 models, killed after a checkpoint: the rerun continues from the saved
    epoch and gives bit for bit what an uninterrupted run gives."""
    store = tmp_path / "store"
    num_points, epochs = 4, 40

    def checkpointed(s):
        return any(e["event"] == "checkpoint" and e["epoch"] >= 3 for e in sweep.Store(s).read_journal())

    run_and_kill(tmp_path, store, checkpointed, epochs, num_points, num_points)
    assert not list(store.glob("*.json"))
    data = gaussian_mixture(200, 6, 4, torch.Generator().manual_seed(0), n_test=50)
    points = [MLPPoint(width=8 + i, seed=i, epochs=epochs, batch_size=10) for i in range(num_points)]
    resumed = run_sweep(points, data, store, max_group_size=num_points, dtype="float64", show_progress=False)
    events = sweep.Store(store).read_journal()
    (res,) = [e for e in events if e["event"] == "resume"]
    assert res["epoch"] >= 3 and [e["event"] for e in events].count("start") == 1
    fresh = run_sweep(points, data, None, max_group_size=num_points, dtype="float64", show_progress=False)
    for a, b in zip(resumed, fresh):
        assert_same(a, b, 0.0)


def test_validation_names_the_parameter():
    with pytest.raises(ValueError, match="'width'"):
        MLPPoint(width=0)
    with pytest.raises(TypeError, match="'lr'"):
        MLPPoint(width=4, lr="fast")
    with pytest.raises(ValueError, match="'label_noise'"):
        MLPPoint(width=4, label_noise=1.5)
    with pytest.raises(ValueError, match="'points'"):
        run_sweep([], small_data())
    with pytest.raises(TypeError, match=r"'points\[0\]'"):
        run_sweep([{"width": 3}], small_data())


def test_groups_respect_schedule_and_size():
    points = [MLPPoint(width=w, epochs=e) for w in (2, 50, 300) for e in (1, 2)]
    family = MLPFamily(40, 10)
    groups = sweep.plan_groups(family, points, max_group_size=2, group_overhead=1e9)
    for g in groups:
        assert len(g) <= 2 and len({points[i].schedule() for i in g}) == 1
    assert sorted(i for g in groups for i in g) == list(range(len(points)))
    assert len(sweep.plan_groups(family, points, None, group_overhead=1e12)) == 2  # one group per schedule
    assert len(sweep.plan_groups(family, points, None, group_overhead=0.0)) == 6   # no overhead: no padding


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_engine_matches_cpu():
    data = small_data()
    points = [MLPPoint(width=w, seed=w, epochs=2, batch_size=40) for w in (3, 12)]
    cpu = run_sweep(points, data, None, dtype="float64", show_progress=False)
    gpu = run_sweep(points, data, None, device="cuda", dtype="float64", show_progress=False)
    for a, b in zip(cpu, gpu):
        assert_same(a, b, 1e-8)


def test_ray_is_optional_and_imported_only_when_asked_for(monkeypatch):
    code = textwrap.dedent("""
        import sys, torch
        from gdlab.data import gaussian_mixture
        from gdlab.sweep import MLPPoint, run_sweep
        data = gaussian_mixture(40, 6, 4, torch.Generator().manual_seed(0), n_test=10)
        run_sweep([MLPPoint(width=3, epochs=1, batch_size=20)], data, None, show_progress=False)
        print("ray" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"gdlab\[ray\]"):
        run_sweep([MLPPoint(width=3, epochs=1)], small_data(), None, executor="ray", show_progress=False)
    with pytest.raises(ValueError, match="'executor'"):
        run_sweep([MLPPoint(width=3, epochs=1)], small_data(), None, executor="dask", show_progress=False)
