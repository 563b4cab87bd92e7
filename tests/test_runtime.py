import pytest
import torch

from gdlab import runtime


def test_setup_validates_profile_and_seed():
    with pytest.raises(ValueError, match="parameter 'profile'.*'quick', 'paper'"):
        runtime.setup("fast")
    with pytest.raises(ValueError, match="parameter 'seed'"):
        runtime.setup("quick", -1)
    with pytest.raises(TypeError, match="parameter 'seed'"):
        runtime.setup("quick", 1.5)
    with pytest.raises(ValueError, match="parameter 'device'"):
        runtime.setup("quick", 0, "tpu")


def test_checks_name_the_parameter_and_the_allowed_range():
    assert runtime.check_int("width", 3, min=1) == 3
    with pytest.raises(ValueError, match=r"parameter 'width': got -2; expected an integer in \[1, inf\]"):
        runtime.check_int("width", -2, min=1)
    with pytest.raises(TypeError, match="parameter 'width'.*bool"):
        runtime.check_int("width", True)
    with pytest.raises(TypeError, match="parameter 'eta': got 'big'"):
        runtime.check_float("eta", "big")
    with pytest.raises(ValueError, match="parameter 'eta'.*> 0"):
        runtime.check_float("eta", 0.0, min=0.0, open_min=True)
    with pytest.raises(ValueError, match="finite"):
        runtime.check_float("eta", float("nan"))
    assert runtime.check_sequence("widths", [1, 2], lambda n, v: runtime.check_int(n, v, min=1)) == [1, 2]
    with pytest.raises(ValueError, match=r"parameter 'widths\[1\]'"):
        runtime.check_sequence("widths", [1, 0], lambda n, v: runtime.check_int(n, v, min=1))


def test_same_seed_same_numbers_and_profile_defaults():
    rt = runtime.setup("quick", 5, "cpu", style=False)
    a = torch.randn(4, generator=rt.generator(1))
    b = torch.randn(4, generator=rt.generator(1))
    assert torch.equal(a, b) and not torch.equal(a, torch.randn(4, generator=rt.generator(2)))
    assert rt.quick and rt.pick(quick=1, paper=2) == 1
    assert rt.default(None, quick=1, paper=2) == 1 and rt.default(7, quick=1, paper=2) == 7
    paper = runtime.Runtime("paper", 0, torch.device("cpu"))
    assert paper.pick(quick=1, paper=2) == 2


def test_streams_do_not_coincide_across_seeds():
    # with seed + offset, seed 1's stream 4 would be seed 0's stream 5
    draws = {(s, o): torch.randn(4, generator=runtime.Runtime("quick", s, torch.device("cpu")).generator(o))
             for s in range(3) for o in range(6)}
    for (a, b) in [((0, 5), (1, 4)), ((0, 1), (1, 0)), ((2, 0), (0, 2))]:
        assert not torch.equal(draws[a], draws[b])
    with pytest.raises(ValueError, match="parameter 'offset'"):
        runtime.Runtime("quick", 0, torch.device("cpu")).generator(-1)


def test_pick_device_auto_and_dtype():
    assert runtime.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.pick_dtype("float64") is torch.float64
    with pytest.raises(ValueError, match="parameter 'dtype'"):
        runtime.pick_dtype("float16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_is_deterministic():
    rt = runtime.setup("paper", 0, "cuda", style=False)
    assert torch.equal(torch.randn(3, generator=rt.generator(), device="cuda"),
                       torch.randn(3, generator=rt.generator(), device="cuda"))


def test_params_declare_kinds_ranges_and_profile_defaults():
    from gdlab.runtime import Choice, Flag, Float, Floats, Int, Ints, ParameterError

    specs = dict(d=Int(smoke=2, quick=5, paper=20, min=1, max=64), eta=Float(default=0.1, min=0, open_min=True, max=1),
                 widths=Ints(quick=[4, 8], paper=[16, 32], min=1, max=512, length=(2, 4), increasing=True),
                 sigmas=Floats(default=[0.0, 1.0], min=0, max=10), kind=Choice(["a", "b"], default="a"),
                 flag=Flag(default=False))
    unset = dict.fromkeys(specs)
    for profile, d, widths in (("smoke", 2, [4, 8]), ("quick", 5, [4, 8]), ("paper", 20, [16, 32])):
        p = runtime.Runtime(profile, 0, torch.device("cpu")).params(unset, **specs)
        assert (p.d, p.widths, p.eta, p.kind, p.flag) == (d, widths, 0.1, "a", False)
    rt = runtime.Runtime("quick", 0, torch.device("cpu"))
    p = rt.params({**unset, "widths": (2, 3), "d": 7}, **specs)
    assert p.widths == [2, 3] and p.d == 7 and p.as_dict()["sigmas"] == [0.0, 1.0]
    with pytest.raises(AttributeError, match="read-only"):
        p.d = 3
    for bad, message in [({"d": 65}, r"parameter 'd': got 65; expected an integer in \[1, 64\]"),
                         ({"widths": [8, 4]}, "parameter 'widths'.*increasing"),
                         ({"widths": [1, 2, 3, 4, 5]}, "parameter 'widths'.*at most 4"),
                         ({"eta": 0.0}, "parameter 'eta'.*> 0"),
                         ({"kind": "c"}, "parameter 'kind'.*allowed values are \\['a', 'b'\\]"),
                         ({"flag": 1}, "parameter 'flag'.*True or False")]:
        with pytest.raises(ParameterError, match=message):
            rt.params({**unset, **bad}, **specs)
    with pytest.raises(ParameterError, match="not set in the parameters cell"):
        rt.params({}, d=specs["d"])
    with pytest.raises(ParameterError, match="no default"):
        rt.params({"n": None}, n=Int(min=1, max=2))
    with pytest.raises(TypeError, match="give max"):
        Int(default=3, min=1)
    assert "expected an integer in [1, 64]" in p.table()


def test_smoke_profile_picks_quick_unless_told_and_is_not_judged():
    rt = runtime.setup("smoke", 0, "cpu")
    assert rt.quick and rt.smoke and not rt.judged
    assert rt.pick(quick=1, paper=2) == 1 and rt.pick(quick=1, paper=2, smoke=0) == 0
    assert runtime.setup("quick", 0, "cpu").judged
    with pytest.raises(ValueError, match="parameter 'seed'"):
        runtime.setup("quick", 2**64)


def test_setup_leaves_matplotlib_alone_unless_asked():
    import matplotlib

    before = dict(matplotlib.rcParams)
    runtime.setup("quick", 0, "cpu")
    assert dict(matplotlib.rcParams) == before
