"""Tests for gdlab.icl.transformer."""
import pytest
import torch

from gdlab.icl.tasks import sample_tasks
from gdlab.icl.transformer import CausalTransformer, TransformerConfig, interleave, prompt_loss


def _model(models=2, layout="akyurek"):
    cfg = TransformerConfig(d=3, n_points=6, width=16, depth=2, heads=2, models=models, layout=layout)
    return CausalTransformer(cfg, generator=torch.Generator().manual_seed(0))


def test_interleave_layouts():
    x, y = torch.arange(6.0).reshape(1, 2, 3), torch.tensor([[10.0, 20.0]])
    tok = interleave(x, y)
    assert tok.shape == (1, 4, 4)
    torch.testing.assert_close(tok[0, 0], torch.tensor([0.0, 0, 1, 2]))
    torch.testing.assert_close(tok[0, 1], torch.tensor([10.0, 0, 0, 0]))
    torch.testing.assert_close(interleave(x, y, "paired")[0, 3], torch.tensor([20.0, 3, 4, 5]))


@pytest.mark.parametrize("layout", ["akyurek", "paired"])
def test_shapes_and_causality(layout):
    model = _model(layout=layout)
    t = sample_tasks((2, 5), 6, 3, generator=torch.Generator().manual_seed(1))
    out = model.predict_all(t)
    assert out.shape == (2, 5, 6)
    t2 = sample_tasks((2, 5), 6, 3, generator=torch.Generator().manual_seed(2))
    mixed = type(t)(torch.cat([t.x[..., :3, :], t2.x[..., 3:, :]], -2), torch.cat([t.y[..., :3], t2.y[..., 3:]], -1),
                    t.x_query, t.y_query, t.w)
    torch.testing.assert_close(model.predict_all(mixed)[..., :3], out[..., :3])  # later points cannot leak back
    short = type(t)(t.x[..., :5, :], t.y[..., :5], t.x[..., 5, :], t.y[..., 5], t.w)
    torch.testing.assert_close(model.predict(short), out[..., 5])  # query after 5 points = 6th prefix prediction
    with pytest.raises(ValueError, match="at most 5"):
        model.predict(t)


def test_models_are_independent():
    model = _model()
    t = sample_tasks((2, 4), 6, 3, generator=torch.Generator().manual_seed(1))
    out = model.predict_all(t)
    out[1].sum().backward()
    assert float(model.read_out_w.grad[0].abs().sum()) == 0.0
    assert float(model.read_out_w.grad[1].abs().sum()) > 0.0
    assert prompt_loss(model, t).dim() == 0


def test_config_validation():
    with pytest.raises(ValueError, match="heads"):
        TransformerConfig(d=3, n_points=4, width=10, heads=3)
    with pytest.raises(ValueError, match="depth"):
        TransformerConfig(d=3, n_points=4, depth=0)
    with pytest.raises(ValueError, match="layout"):
        TransformerConfig(d=3, n_points=4, layout="concat")


def test_causal_attention_matches_torch():
    from gdlab.icl.transformer import _causal_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 4, 7, 5, generator=g) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(_causal_attention(q, k, v), expected, rtol=1e-5, atol=1e-6)


def test_qk_std_sets_the_query_key_init_scale_only():
    cfg = TransformerConfig(d=3, n_points=6, width=64, depth=2, heads=4, qk_std=0.3)
    tf = CausalTransformer(cfg, generator=torch.Generator().manual_seed(0))
    for block in tf.blocks:
        w = block["qkv_w"][0]
        assert abs(float(w[:, :128].std()) - 0.3) < 0.02 and abs(float(w[:, 128:].std()) - 0.02) < 0.002
    with pytest.raises(ValueError, match="parameter 'qk_std'"):
        TransformerConfig(d=3, n_points=6, qk_std=0.0)


def test_hidden_states_and_predict_each():
    model = _model(models=2)
    t = sample_tasks(5, 6, 3, generator=torch.Generator().manual_seed(4))
    states = model.hidden_states(interleave(t.repeat(2).x, t.repeat(2).y))
    assert len(states) == 3 and states[-1].shape == (2, 5, 12, 16)
    out = model.predict_each(t)
    assert out.shape == (2, 5, 6)
    torch.testing.assert_close(out, model.predict_all(t.repeat(2)))
    assert model.predict_query_each(t.prefix(4)).shape == (2, 5)


def test_constant_schedule_trains():
    from gdlab.icl.transformer import train_transformer

    model = _model(models=1)
    g = torch.Generator().manual_seed(5)
    hist = train_transformer(model, lambda s: sample_tasks((1, 8), 6, 3, generator=g), 3, schedule="constant")
    assert len(hist.loss) >= 1
    with pytest.raises(ValueError, match="schedule"):
        train_transformer(model, lambda s: sample_tasks((1, 8), 6, 3, generator=g), 3, schedule="linear")
