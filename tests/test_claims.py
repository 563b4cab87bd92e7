import json
import math

import pytest

from gdlab.claims import MIMETYPE, ClaimFailure, Claims, Control, fmt


def make():
    return Claims("00-test", profile="quick", seed=1, device="cpu")


CTL = {"control": 1e9}  # a control value that fails every criterion below


def test_shortcuts_decide_pass_and_fail():
    c = make()
    assert c.close("a", source="s", statement="x", measured=1.05, target=1.0, rtol=0.1, controls=CTL).passed
    assert not c.close("b", source="s", statement="x", measured=1.2, target=1.0, rtol=0.1, controls=CTL).passed
    assert c.between("c", source="s", statement="x", measured=0.5, lo=0, hi=1, controls=CTL).passed
    assert not c.between("d", source="s", statement="x", measured=float("nan"), lo=0, hi=1, controls=CTL).passed
    assert c.at_most("e", source="s", statement="x", measured=1, bound=1, controls=CTL).passed
    assert not c.at_least("f", source="s", statement="x", measured=0.9, bound=1, controls={"c": 0.0}).passed
    assert [x.id for x in c.failed] == ["b", "d", "f"]


def test_a_reproduction_needs_a_control_and_every_control_must_fail():
    c = make()
    with pytest.raises(ValueError, match="names no control"):
        c.at_most("a", source="s", statement="x", measured=0, bound=1)
    ok = c.at_most("b", source="s", statement="x", measured=0.1, bound=1, controls={"big init": 3.0, "flow": 2.0})
    assert ok.passed and ok.status == "PASS" and [r.passed for r in ok.controls] == [False, False]
    bad = c.at_most("c", source="s", statement="x", measured=0.1, bound=1, controls={"big init": 3.0, "flow": 0.5})
    assert not bad.passed and bad.measurement_passed and bad.status == "FAIL"
    assert "control 'flow' passes too" in bad.message and "cannot tell the effect" in bad.message
    (rec,) = [r for r in c.records() if r["id"] == "c"]
    assert rec["controls"][1] == {"name": "flow", "measured": 0.5, "details": {}, "passed": True}


def test_custom_criterion_judges_measurement_and_controls_alike():
    c = make()
    claim = c.check("a", source="s", statement="x", measured={"lo": -1, "hi": 1}, tolerance="signs",
                    criterion=lambda m: m["lo"] < 0 < m["hi"], controls={"flat": {"lo": 1, "hi": 1},
                                                                        "sign": {"lo": -1, "hi": -1}})
    assert claim.passed and [r.passed for r in claim.controls] == [False, False]
    with pytest.raises(ValueError, match="criterion"):
        c.check("b", source="s", statement="x", measured=1, tolerance="t", passed=True, controls={"z": 1})
    with pytest.raises(ValueError, match="exactly one"):
        c.check("b", source="s", statement="x", measured=1, tolerance="t", kind="identity")


def test_control_details_are_recorded():
    c = make()
    c.at_most("a", source="s", statement="x", measured=0.01, bound=0.1, details={"rank": 3},
              controls={"alpha = 1": Control(2.0, residual=1e-9, rank=15)})
    (rec,) = c.records()
    assert rec["details"] == {"rank": 3}
    assert rec["controls"][0]["details"] == {"residual": 1e-9, "rank": 15}
    assert "rank: 15" in c.table_text() and "residual" in c.table_html()


def test_identities_have_no_controls_and_are_listed_apart():
    c = make()
    c.identity("I1", source="s", statement="exact", measured=1e-15, bound=1e-12)
    c.identity("I2", source="s", statement="exact", measured={"a": 1}, passed=False, tolerance="equal")
    c.at_most("C1", source="s", statement="x", measured=0, bound=1, controls=CTL)
    with pytest.raises(ValueError, match="no controls"):
        c.at_most("I3", source="s", statement="x", measured=0, bound=1, kind="identity", controls=CTL)
    assert [x.kind for x in c.items] == ["identity", "identity", "reproduction"]
    text = c.table_text().splitlines()
    assert text[2].startswith("C1") and "identities:" in text[4] and text[5].startswith("I1")
    assert [x.id for x in c.failed] == ["I2"]


def test_declared_not_reproduced_does_not_fail_and_reports_a_pass():
    c = Claims("00", not_reproduced={"C5": "needs a GPU-scale run"})
    c.at_most("C5", source="s", statement="x", measured=2, bound=1, controls=CTL)
    assert c.items[0].status == "NOT REPRODUCED" and not c.failed
    assert "declared not reproduced: needs a GPU-scale run" in c.items[0].message
    c.report()
    d = Claims("00", not_reproduced={"C5": "why"})
    d.at_most("C5", source="s", statement="x", measured=0, bound=1, controls=CTL)
    assert d.items[0].status == "UNEXPECTED PASS" and "remove the declaration" in d.items[0].message
    e = Claims("00", not_reproduced={"C9": "why"})
    with pytest.raises(ClaimFailure, match="never recorded: C9"):
        e.report()
    with pytest.raises(ValueError, match="reason"):
        Claims.for_runtime("00", type("RT", (), {"profile": "quick", "seed": 0, "device_name": "cpu"}),
                           not_reproduced={"C1": ""})


def test_smoke_claims_are_not_judged():
    c = Claims("00", profile="smoke")
    c.at_most("a", source="s", statement="x", measured=5, bound=1, controls=CTL)
    assert c.items[0].status == "NOT JUDGED" and not c.failed
    c.report()


def test_duplicate_ids_are_rejected():
    c = make()
    c.at_most("a", source="s", statement="x", measured=0, bound=1, controls=CTL)
    with pytest.raises(ValueError, match="twice"):
        c.at_most("a", source="s", statement="x", measured=0, bound=1, controls=CTL)


def test_records_are_json_in_the_contract_format():
    import numpy as np
    import torch

    c = make()
    c.check("a", source="paper, Fig. 1", statement="x", measured=torch.tensor([1.0, 2.0]),
            passed=True, tolerance="t", paper_value=np.float64(0.5), kind="identity")
    (rec,) = json.loads(c.to_json())
    assert rec["measured"] == [1.0, 2.0] and rec["paper_value"] == 0.5
    assert {"id", "kind", "source", "statement", "paper_value", "measured", "tolerance", "passed", "status",
            "controls", "profile", "seed", "device"} <= set(rec)


def test_report_displays_and_raises_on_failure(capsys):
    c = make()
    c.at_most("ok", source="s", statement="x", measured=0, bound=1, controls=CTL)
    c.report()
    c.at_most("bad", source="s", statement="x", measured=2, bound=1, controls=CTL)
    with pytest.raises(ClaimFailure, match="1 of 2 claims failed: bad"):
        c.report()
    assert "FAIL" in c.table_text() and "FAIL" in c.table_html()
    assert MIMETYPE.endswith("+json")


def test_fmt():
    assert fmt(0.123456) == "0.123" and fmt(1e-7) == "1.00e-07" and fmt(None) == "-"
    assert fmt([1, 0.5]) == "[1, 0.5]" and fmt({"a": 2.0}) == "a: 2" and fmt(math.inf) == "inf"
