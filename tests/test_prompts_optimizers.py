"""gdlab.prompts.soft, .hotflip and .token_descent on the real (frozen) encoder, at tiny sizes."""
import pytest
import torch

from gdlab.prompts import hotflip, soft, tasks, token_descent
from gdlab.prompts.classifier import PromptClassifier
from gdlab.prompts.encoder import Encoder


@pytest.fixture(scope="module")
def setup():
    enc = Encoder.load("cpu")
    clf = PromptClassifier(enc, tasks.LABEL_TEXTS)
    splits = tasks.sentiment_words(32, 16, 16, seed=0)
    return enc, clf, splits, {k: clf.prepare(getattr(splits, k)) for k in ("train", "dev", "test")}


def test_soft_prompts_and_mixture_train(setup):
    enc, clf, splits, data = setup
    g = torch.Generator().manual_seed(0)
    prompts = [soft.init_soft_prompt(clf, 2, how, g) for how in soft.INITS] + [soft.init_soft_prompt(clf, 1, "random", g)]
    assert torch.equal(prompts[2][0], enc.E[enc.token_ids("negative")[0]])
    fit = soft.train_soft_prompts(clf, prompts, data["train"], data["dev"], names=["a", "b", "mix"],
                                  groups=[[0], [1], [2, 3]], steps=4, lr=0.05, batch_size=8, eval_every=2, generator=g)
    assert fit.eval_steps == [0, 2, 4] and len(fit.dev_accuracy[0]) == 3
    assert torch.isclose(fit.weights[2].sum(), torch.tensor(1.0))
    assert soft.accuracy(clf, fit, data["test"]).shape == (3,)
    with pytest.raises(ValueError, match="init"):
        soft.init_soft_prompt(clf, 2, "zeros", g)


def test_first_order_score_is_a_directional_derivative(setup):
    enc, clf, splits, data = setup
    prompt = enc.token_ids("this word is")
    cands = torch.tensor(enc.token_ids("good bad movie"))
    batch = data["train"].take(torch.arange(8))
    scores = hotflip.first_order_scores(clf, prompt, batch, cands)
    assert scores.shape == (len(prompt), 3)
    same = hotflip.first_order_scores(clf, prompt, batch, torch.tensor(prompt))
    assert torch.allclose(same.diagonal(), torch.zeros(len(prompt)), atol=1e-5)  # no swap, no change
    # a tiny step toward a candidate changes the loss by eps times the first-order prediction
    eps, i = 1e-2, 1
    E = enc.E
    base = clf.embed_prompts([prompt])[0]
    moved = base.clone()
    moved[0, i] += eps * (E[cands[0]] - base[0, i])
    change = clf.loss(base, None, batch) - clf.loss(moved, None, batch)
    assert torch.isclose(change[0], eps * scores[i, 0], rtol=0.2, atol=1e-4)
    trial = hotflip.swap_trial(clf, prompt, 0, cands, batch, 2, torch.Generator().manual_seed(0))
    exact = hotflip.swap_losses(clf, prompt, 0, cands, batch)
    assert exact.shape == (3,) and 0 <= trial.best_rank < 3 and trial.best_gain >= trial.top_k_gain - 1e-6


def test_token_descent_entropy_falls(setup):
    enc = setup[0]
    ids, y = tasks.vocabulary_feature("animals", enc.tokenizer, n_positive=8, n_negative=8, seed=0)
    out = token_descent.describe_features(enc, [(ids, y, tasks.feature_instances("animals", enc.tokenizer))],
                                          steps=20, vocabulary_size=500, generator=torch.Generator().manual_seed(0))
    assert out[0].entropy[-1] < out[0].entropy[0] and isinstance(out[0].final_label, str)
    assert out[0].final_label not in {"dog", "cat"}
    assert out[0].refit_label and out[0].refit_label not in {"dog", "cat"} and 0 <= out[0].refit_loss < 0.7


def test_refit_loss_is_the_logistic_optimum():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(200, generator=g)
    y = (torch.rand(200, generator=g) < torch.sigmoid(3 * s - 1)).float()
    best = token_descent.refit_loss(s, y)
    bce = lambda w, c: float(torch.nn.functional.binary_cross_entropy_with_logits(w * s + c, y))
    assert best <= bce(3.0, -1.0) + 1e-6 and best < bce(0.0, 0.0)
    w, c = _logistic_fit(s, y).tolist()                         # an independent optimizer agrees
    assert abs(best - bce(w, c)) < 1e-4
    assert token_descent.refit_loss(s, (s > 0).float()) < 0.1   # separable: small, finite


def _logistic_fit(s, y):
    w = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)
    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(w[0] * s + w[1], y)
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach()


def test_untuned_prompts_and_the_linear_probe(setup):
    enc, clf, splits, data = setup
    g = torch.Generator().manual_seed(1)
    prompts = [soft.init_soft_prompt(clf, 2, how, g) for how in soft.INITS]
    start = soft.untuned(clf, prompts, names=list(soft.INITS))
    direct = clf.accuracy(start.prompt, start.mask, data["test"])
    assert torch.allclose(soft.accuracy(clf, start, data["test"]), direct)   # untuned = the prompts as drawn
    probe = soft.linear_probe(clf, data["train"], data["dev"], data["test"], cs=(0.1, 1.0))
    assert 0 <= probe["test"] <= 1 and probe["C"] in (0.1, 1.0)


def test_spearman_and_the_random_order_control(setup):
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert abs(hotflip.spearman(a, a * 10) - 1) < 1e-12 and abs(hotflip.spearman(a, -a) + 1) < 1e-12
    enc, clf, splits, data = setup
    vocab = torch.tensor(tasks.whole_word_ids(enc.tokenizer)[:200])
    study = hotflip.swap_study(clf, data["train"], vocab, trials=2, prompt_length=3, candidates=8, k=2,
                               batch_size=6, generator=torch.Generator().manual_seed(0))
    assert all(-1 <= t.spearman <= 1 and -1 <= t.random_spearman <= 1 for t in study)


def test_batched_refit_equals_one_at_a_time():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 120, generator=g)
    y = (torch.rand(120, generator=g) < 0.4).float()
    batched = token_descent.refit_losses(s, y)
    assert torch.allclose(batched, torch.tensor([token_descent.refit_loss(r, y) for r in s], dtype=batched.dtype))
    assert torch.allclose(token_descent.refit_losses(s, y, dtype=torch.float32, tol=1e-6).double(), batched,
                          atol=1e-5)


def test_label_features_carry_their_references(setup):
    enc = setup[0]
    out = token_descent.label_features(enc, ["animals"], replicates=1, restarts=1, seed=0, n_positive=8,
                                       n_negative=8, steps=4, vocabulary_size=300)
    d = out["animals"][0]
    assert d.candidates > 0 and 0 <= d.refit_rank < d.candidates
    assert d.exhaustive_label and d.random_label and d.refit_label
    assert d.exhaustive_label not in {"dog", "cat"}          # instances are never labels
