"""gdlab.prompts.apo: the LM classifier (LMOps' sectioned prompt, cached scoring), the gradient and
Monte-Carlo expanders against a scripted LLM, and one real APO round with SmolLM2 as both the task
model and the LLM, at a tiny budget. No network."""
import pytest
import torch

from gdlab.prompts import apo, llm, tasks


class _Scripted:
    """A chat backend whose replies come from a function of the prompt (no model)."""

    name = "scripted"

    def __init__(self, reply):
        self.reply, self.prompts = reply, []

    def chat(self, messages, *, temperature, max_tokens, seed):
        self.prompts.append(messages[-1]["content"])
        return self.reply(messages[-1]["content"])


def _reply(prompt):
    if prompt.startswith("I'm trying to write a zero-shot classifier prompt."):
        return "<START>it never says what negative words look like<END>"
    if prompt.startswith("I'm trying to write a zero-shot classifier."):
        return "<START>Is this word positive rather than negative?<END>"
    return "Does this word sound positive?\nIt keeps the meaning."   # a synonym, with a trailing explanation


def _errors():
    return apo.Errors(["awful", "grim", "sad"], ["No", "No", "No"], ["Yes", "Yes", "Yes"])


def test_errors_are_shown_as_lmops_does():
    text = _errors().describe()
    assert text.startswith('## Example 1\nText: "awful"\nLabel: No\nPrediction: Yes')
    assert text.count("## Example") == 3
    assert len(_errors().sample(2, torch.Generator().manual_seed(0))) == 2


def test_gradient_expander_follows_lmops_steps():
    backend = _Scripted(_reply)
    ex = apo.GradientExpander(llm.ChatClient(backend), n_gradients=2, errors_per_gradient=2, mc_samples=1,
                              max_expansion_factor=8)
    children = ex.expand(["Is this word positive?"], [_errors()], torch.Generator().manual_seed(0))
    assert children == [["Is this word positive rather than negative?", "Does this word sound positive?"]]
    kinds = [p.split("\n")[0] for p in backend.prompts]
    assert sum(k.startswith("I'm trying to write a zero-shot classifier prompt") for k in kinds) == 2
    assert sum(k == "I'm trying to write a zero-shot classifier." for k in kinds) == 2
    assert ex.outcomes["gradient: ok"] == 2 and ex.outcomes["edit: ok"] == 2 and ex.outcomes["synonym: ok"] == 3  # 2 edits + the parent
    assert ex.log[0]["gradient"] == "it never says what negative words look like"
    assert "Based on these examples the problem with this prompt is that it never says" in backend.prompts[2]


def test_untagged_replies_are_skipped_or_used_as_configured():
    backend = _Scripted(lambda prompt: "Plain text without any tags.\n\nA second paragraph.")
    strict = apo.GradientExpander(llm.ChatClient(backend), n_gradients=1, errors_per_gradient=2, mc_samples=0)
    assert strict.expand(["Is it good?"], [_errors()], torch.Generator().manual_seed(0)) == [[]]
    assert strict.outcomes == {"gradient: no_tags": 1}
    loose = apo.GradientExpander(llm.ChatClient(backend), n_gradients=1, errors_per_gradient=2, mc_samples=0,
                                 untagged="reply")
    assert loose.expand(["Is it good?"], [_errors()], torch.Generator().manual_seed(0)) == \
        [["Plain text without any tags."]]
    assert loose.outcomes == {"gradient: untagged, reply used": 1, "edit: untagged, reply used": 1}
    with pytest.raises(ValueError, match="untagged"):
        apo.GradientExpander(llm.ChatClient(backend), untagged="maybe")


def test_a_failing_llm_yields_no_children_and_is_counted():
    class Broken:
        name = "broken"

        def chat(self, messages, **kw):
            raise RuntimeError("model crashed")

    client = llm.ChatClient(Broken())
    ex = apo.GradientExpander(client, n_gradients=2, errors_per_gradient=2, mc_samples=1)
    assert ex.expand(["Is it good?"], [_errors()], torch.Generator().manual_seed(0)) == [[]]
    assert client.events["error"] >= 2 and "error" in client.report()


def test_monte_carlo_expander_paraphrases_only():
    backend = _Scripted(_reply)
    mc = apo.MonteCarloExpander(llm.ChatClient(backend), count=3)
    children = mc.expand(["Is this word positive?", "Is it good?"], [_errors(), _errors()],
                         torch.Generator().manual_seed(0))
    assert children == [["Does this word sound positive?"], ["Does this word sound positive?"]]
    assert len(backend.prompts) == 6 and all(p.startswith("Generate a variation") for p in backend.prompts)


def test_config_defaults_are_lmops_and_validated():
    cfg = apo.APOConfig()
    assert (cfg.beam_width, cfg.rounds, cfg.minibatch, cfg.n_gradients, cfg.budget) == (4, 6, 64, 4, 2048)
    with pytest.raises(ValueError, match="beam_width"):
        apo.APOConfig(beam_width=0)
    with pytest.raises(ValueError, match="selector"):
        apo.APOConfig(selector="greedy")


@pytest.fixture(scope="module")
def smollm2():
    from gdlab.prompts import lm

    try:
        return lm.LocalLM()
    except (ImportError, FileNotFoundError) as e:  # pragma: no cover - the Makefile installs the weights
        pytest.skip(str(e))


def test_lm_classifier_scores_and_caches(smollm2):
    clf = apo.LMClassifier(smollm2, examples=[("horrible", 0), ("lovely", 1)])
    text = clf.render("Is this word positive?", "dreadful")
    assert text.startswith("# Task\nIs this word positive?\n\n# Output format\nAnswer Yes or No as labels")
    assert "# Examples\nText: horrible\nLabel: No\nText: lovely\nLabel: Yes\n" in text
    assert text.endswith("# Prediction\nText: dreadful\nLabel:")
    data = tasks.LabeledTexts(["dreadful", "joyful", "awful"], torch.tensor([0, 1, 0]))
    lp = clf.label_logprobs("Is this word positive?", data.texts)
    ids = smollm2.chat_ids([{"role": "user", "content": clf.render("Is this word positive?", "joyful")}])
    with torch.no_grad():
        full = smollm2.model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)[clf.label_ids]
    assert torch.allclose(lp[1], full, atol=1e-4)
    acc = clf.accuracy(["Is this word positive?"], data)
    seen = clf.evaluations
    assert torch.equal(clf.accuracy(["Is this word positive?"], data), acc) and clf.evaluations == seen


def test_one_real_apo_round_with_smollm2(smollm2):
    """SmolLM2 writes the gradients, edits and synonyms and scores the candidates: one round, tiny budget."""
    split = tasks.sentiment_words(16, 2, 2, seed=0)
    clf = apo.LMClassifier(smollm2, examples=[("horrible", 0), ("lovely", 1)])
    client = llm.ChatClient(smollm2)
    cfg = apo.APOConfig(beam_width=2, rounds=1, minibatch=8, n_gradients=1, errors_per_gradient=2, mc_samples=1,
                        max_expansion_factor=2, samples_per_eval=4, eval_prompts_per_round=2, eval_rounds=2)
    ex = apo.GradientExpander(client, n_gradients=1, errors_per_gradient=2, mc_samples=1, max_expansion_factor=2,
                              max_tokens={"gradient": 16, "edit": 16, "synonym": 12}, untagged="reply")
    res = apo.apo_search(clf, "Is this word positive?", ex, split.train, cfg, torch.Generator().manual_seed(0))
    assert len(res.rounds) == 2 and res.rounds[0].beam == ["Is this word positive?"]
    last = res.rounds[-1]
    assert 1 <= len(last.beam) <= 2 and last.spend <= cfg.budget and isinstance(res.best, str) and res.best
    assert client.calls >= 2 and smollm2.timing.generated_tokens > 0
    assert sum(ex.outcomes.values()) >= 2 and not client.failures
