"""gdlab.prompts.soft, .hotflip, .token_descent and .apo on the real (frozen) encoder, at tiny sizes."""
import pytest
import torch

from gdlab.prompts import apo, hotflip, llm, soft, tasks, token_descent
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


class _ScriptedLLM:
    """A backend whose replies are scripted: well-formed, malformed, empty."""

    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)

    def chat(self, messages, *, temperature, max_tokens, seed):
        return self.replies.pop(0) if self.replies else ""


def test_apo_search_offline_and_with_llm_expander(setup, tmp_path):
    enc, clf, splits, data = setup
    vocab = apo.candidate_vocabulary(clf, 300)
    cfg = apo.APOConfig(beam_width=2, rounds=2, minibatch=16, num_gradients=1, errors_per_gradient=2, mc_samples=1,
                        expansions_per_parent=3, budget=64, samples_per_pull=8, arms_per_round=2)
    expander = apo.TokenEditExpander(clf, vocab, apo.NeighbourParaphraser(clf, vocab), 1, 2, 1)
    seed_prompt = tuple(enc.token_ids("the sentiment is"))
    res = apo.apo_search(clf, seed_prompt, expander, splits.train, data, cfg, torch.Generator().manual_seed(0))
    assert len(res.rounds) == 3 and res.rounds[0].best == seed_prompt and len(res.rounds[-1].beam) <= 2
    assert all(r.spend <= cfg.budget for r in res.rounds)
    replies = ["<START>it ignores negation<END>", "<START>decide if the word is positive<END>",
               "no tags here", "", "x" * 50000]
    chat = llm.CachedChat(_ScriptedLLM(replies), tmp_path)
    lx = apo.LLMExpander(chat, clf, num_gradients=2, errors_per_gradient=2, mc_samples=1)
    res = apo.apo_search(clf, seed_prompt, lx, splits.train, data,
                         apo.APOConfig(**{**cfg.__dict__, "rounds": 1}), torch.Generator().manual_seed(0))
    assert lx.outcomes.get("ok", 0) >= 2 and lx.outcomes.get("no_tags", 0) + lx.outcomes.get("empty", 0) >= 1
    assert tuple(enc.token_ids("decide if the word is positive")) in res.rounds[-1].beam + [c for c in res.rounds[-1].beam]\
        or res.rounds[-1].candidates >= 2
    with pytest.raises(ValueError, match="beam_width"):
        apo.APOConfig(beam_width=0)
    with pytest.raises(ValueError, match="seed_prompt"):
        apo.apo_search(clf, (), expander, splits.train, data, cfg, torch.Generator())
