from gdlab.notebook import GLUE_PREFIX, glue


def test_glue_stores_a_plain_number_in_myst_nb_format(monkeypatch):
    import IPython.display
    import numpy as np
    import pytest
    import torch

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda bundle, raw, metadata: shown.append((bundle, metadata)))
    glue("gap", torch.tensor(0.125))
    glue("n", np.int64(3), display=True)
    (b1, m1), (b2, m2) = shown
    assert b1 == {GLUE_PREFIX + "text/plain": "0.125"} and m1["scrapbook"] == {"name": "gap", "mime_prefix": GLUE_PREFIX}
    assert b2 == {"text/plain": "3"} and m2["scrapbook"]["mime_prefix"] == ""
    with pytest.raises(ValueError, match="identifier"):
        glue("not a name", 1)
