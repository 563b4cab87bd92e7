"""APO / ProTeGi: prompt optimization by textual "gradients", edits, paraphrases and beam search.

Pryzant et al. 2023 (Alg. 1), as their reference code runs it (microsoft/LMOps,
``prompt_optimization``): a prompt is a sectioned text whose ``# Task`` section is optimized;
each round, every beam prompt is run on one shared training minibatch; groups of its errors are
shown to an LLM, which writes a *gradient* (a reason the prompt fails); the LLM *edits* the
task section along it; Monte-Carlo *synonyms* explore around each edit and around the parent;
a bandit spends the evaluation budget to keep the top ``beam_width`` (selectors of
:mod:`gdlab.prompts.bandits`; a pull scores the chosen prompts on one shared minibatch).

The control is the search the paper compares against (its appendix Table 5): the same beam,
bandit and budget with a gradient-free *Monte-Carlo* expander that only asks for synonyms of
each parent (directionless iterative search, as in APE), as many candidates per parent as APO
keeps. Both expanders call the same LLM through a :class:`gdlab.prompts.llm.ChatClient`.

The task model is a causal LM (:class:`LMClassifier`): the rendered prompt is the user turn of
its chat template and the class is the label word whose token is likelier as the start of the
reply (greedy decoding restricted to the labels; LMOps' predictor reads "Yes"/"No" from a
generated reply, and its log-likelihood scorer reads the label token's log-probability).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from gdlab.prompts import bandits
from gdlab.prompts.llm import ChatClient, parse_tagged
from gdlab.prompts.tasks import LabeledTexts
from gdlab.runtime import check_choice, check_float, check_int, progress

__all__ = ["PROMPT_TEMPLATE", "GRADIENT_TEMPLATE", "EDIT_TEMPLATE", "SYNONYM_TEMPLATE", "LMClassifier",
           "Errors", "Expander", "first_line", "clean_section", "GradientExpander", "MonteCarloExpander",
           "APOConfig", "APORound", "APOResult", "PromptArms", "find_errors", "apo_search"]

# LMOps' sectioned prompt (prompts/*.md) with the paper's "# Examples" section (its Appendix 1.2)
PROMPT_TEMPLATE = ("# Task\n{task}\n\n# Output format\n{output_format}\n\n{examples}"
                   "# Prediction\nText: {text}\nLabel:")
# The meta-prompts of LMOps' ProTeGi optimizer (optimizers.py), in its structure
GRADIENT_TEMPLATE = ("I'm trying to write a zero-shot classifier prompt.\n\nMy current prompt is:\n\"{prompt}\"\n\n"
                     "But this prompt gets the following examples wrong:\n{errors}\n\n"
                     "give {n} reasons why the prompt could have gotten these examples wrong.\n"
                     "Wrap each reason with <START> and <END>")
EDIT_TEMPLATE = ("I'm trying to write a zero-shot classifier.\n\nMy current prompt is:\n\"{prompt}\"\n\n"
                 "But it gets the following examples wrong:\n{errors}\n\n"
                 "Based on these examples the problem with this prompt is that {gradient}\n\n"
                 "Based on the above information, I wrote {n} different improved prompts.\n"
                 "Each prompt is wrapped with <START> and <END>.\n\nThe {n} new prompts are:")
SYNONYM_TEMPLATE = ("Generate a variation of the following instruction while keeping the semantic meaning."
                    "\n\nInput: {prompt}\n\nOutput:")


# ---------------------------------------------------------------------------- the task model
class LMClassifier:
    """A causal LM as a zero-shot classifier of texts under a task section (LMOps' BinaryPredictor).

    ``label_words[c]`` is class c's answer; the prediction is the label whose first token has the
    largest log-likelihood at the start of the reply. ``examples`` fills the prompt's "# Examples"
    section (fixed for a run, so that every prompt's prefix is computed once). Correctness is
    cached per (task, text) as LMOps' ``Cached01Scorer`` does: a prompt is never scored twice on one text.
    """

    def __init__(self, lm, label_words: Sequence[str] = ("No", "Yes"),
                 output_format: str = "Answer Yes or No as labels", examples: Sequence[tuple[str, int]] = ()):
        self.lm = lm
        self.label_words = tuple(label_words)
        self.output_format = output_format
        self.examples = "".join(f"Text: {t}\nLabel: {self.label_words[int(y)]}\n" for t, y in examples)
        self.examples = f"# Examples\n{self.examples}\n" if self.examples else ""
        self.label_ids = [lm.token_ids(w)[0] for w in self.label_words]
        if len(set(self.label_ids)) != len(self.label_ids):
            raise ValueError(f"parameter 'label_words': {label_words} share their first token")
        self._cache: dict[tuple[str, str], tuple[int, float]] = {}   # (task, text) -> (prediction, margin)

    def render(self, task: str, text: str) -> str:
        return PROMPT_TEMPLATE.format(task=task, output_format=self.output_format, examples=self.examples, text=text)

    def label_logprobs(self, task: str, texts: Sequence[str]) -> torch.Tensor:
        """log p(label token | prompt) (N, C), the prompt's shared prefix computed once."""
        ids = [self.lm.chat_ids([{"role": "user", "content": self.render(task, t)}]) for t in texts]
        if len(ids) == 1:
            cut = len(ids[0]) - 1
        else:
            cut = min(next((i for i, (a, b) in enumerate(zip(ids[0], x)) if a != b), min(len(ids[0]), len(x)))
                      for x in ids[1:])
            cut = min(cut, min(map(len, ids)) - 1)
        return self.lm.next_token_logprobs(ids[0][:cut], [x[cut:] for x in ids], self.label_ids)

    def predictions(self, task: str, texts: Sequence[str]) -> torch.Tensor:
        """Predicted classes (N,) of ``texts`` under ``task`` (cached per text)."""
        todo = list(dict.fromkeys(t for t in texts if (task, t) not in self._cache))
        if todo:
            lp = self.label_logprobs(task, todo).cpu()
            for t, row in zip(todo, lp):
                self._cache[(task, t)] = (int(row.argmax()), float(row.max() - row.min()))
        return torch.tensor([self._cache[(task, t)][0] for t in texts])

    def correct(self, tasks: Sequence[str], data: LabeledTexts) -> torch.Tensor:
        """0/1 correctness (K, N) of each task section on each example."""
        labels = data.labels.cpu()
        return torch.stack([(self.predictions(task, data.texts) == labels).float() for task in tasks])

    def accuracy(self, tasks: Sequence[str], data: LabeledTexts) -> torch.Tensor:
        return self.correct(tasks, data).mean(1)

    @property
    def evaluations(self) -> int:
        """How many (task, text) pairs the model has scored (cache hits not counted)."""
        return len(self._cache)


# ---------------------------------------------------------------------------- expanders
@dataclass
class Errors:
    """A parent's mistakes on the round's minibatch: texts, gold and predicted label words."""

    texts: list[str]
    gold: list[str]
    predicted: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def sample(self, n: int, generator: torch.Generator) -> "Errors":
        idx = torch.randperm(len(self), generator=generator, device=generator.device)[:n].tolist()
        return Errors([self.texts[i] for i in idx], [self.gold[i] for i in idx], [self.predicted[i] for i in idx])

    def describe(self) -> str:
        """LMOps' error string: '## Example i' blocks with the text, its label and the prediction."""
        return "\n\n".join(f"## Example {i + 1}\nText: \"{t.strip()}\"\nLabel: {g}\nPrediction: {p}"
                           for i, (t, g, p) in enumerate(zip(self.texts, self.gold, self.predicted)))


class Expander(Protocol):
    def expand(self, parents: Sequence[str], errors: Sequence[Errors], generator: torch.Generator) -> list[list[str]]: ...


def first_line(text: str) -> str:
    """The first non-empty line of a reply, tidied by :func:`clean_section` (a small model often adds
    an explanation after the variation it was asked for; LMOps keeps the whole reply)."""
    lines = [x for x in (text or "").splitlines() if x.strip()]
    return clean_section(lines[0]) if lines else ""


def clean_section(text: str, max_chars: int = 400) -> str:
    """A generated task section, tidied: surrounding quotes and whitespace removed, cut at ``max_chars``
    (a runaway generation is not a prompt); empty when nothing usable is left."""
    text = text.strip().strip('"').strip()
    return text[:max_chars].strip()


@dataclass
class GradientExpander:
    """APO's expansion (LMOps ``ProTeGi.expand_candidates``): gradients from error groups, edits along
    them, Monte-Carlo synonyms of every edit and of the parent; at most ``max_expansion_factor``
    new sections per parent, sampled at random when there are more (LMOps' default).

    ``untagged``: LMOps keeps only text between <START> and <END> ("skip"); a small model seldom writes
    the tags, and "reply" then takes its whole reply as the one gradient or edit asked for (counted
    apart in ``outcomes``). ``log`` keeps every (parent, errors, gradient, edit) for the chapter to show.
    """

    client: ChatClient
    n_gradients: int = 4
    errors_per_gradient: int = 4
    gradients_per_error: int = 1
    steps_per_gradient: int = 1
    mc_samples: int = 2
    max_expansion_factor: int = 8
    temperature: float = 0.7
    max_tokens: dict = field(default_factory=lambda: {"gradient": 256, "edit": 256, "synonym": 128})
    untagged: str = "skip"
    outcomes: dict = field(default_factory=dict)
    log: list = field(default_factory=list)

    def __post_init__(self):
        check_choice("untagged", self.untagged, ("skip", "reply"))

    def _ask(self, prompts: list[str], kind: str, generator: torch.Generator):
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
        return self.client.chat_batch([[{"role": "user", "content": p}] for p in prompts],
                                      temperature=self.temperature, max_tokens=self.max_tokens[kind], seed=seed)

    def _tagged(self, reply, limit: int, kind: str) -> list[str]:
        """The reply's tagged items (LMOps' parsing); with ``untagged`` = "reply", a reply without tags
        counts as one item (its first paragraph for a gradient, its first line for an edit)."""
        parsed = parse_tagged(reply)
        key = f"{kind}: {parsed.status}"
        if parsed.status == "no_tags" and self.untagged == "reply":
            text = reply.text.strip()
            parsed.items = [text.split("\n\n")[0] if kind == "gradient" else first_line(text)]
            key = f"{kind}: untagged, reply used"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        return [clean_section(x) for x in parsed.items[:limit] if clean_section(x)]

    def synonyms(self, sections: list[str], n: int, generator: torch.Generator) -> list[list[str]]:
        """``n`` variations of each section (LMOps' ``generate_synonyms``: the reply is the variation; here its
        first line)."""
        if not sections or n == 0:
            return [[] for _ in sections]
        replies = self._ask([SYNONYM_TEMPLATE.format(prompt=s) for s in sections for _ in range(n)], "synonym",
                            generator)
        out = []
        for i in range(len(sections)):
            items = [first_line(r.text) if not r.error else "" for r in replies[i * n:(i + 1) * n]]
            for s in items:
                key = "synonym: ok" if s else "synonym: empty"
                self.outcomes[key] = self.outcomes.get(key, 0) + 1
            out.append([s for s in items if s])
        return out

    def expand(self, parents, errors, generator):
        groups = []                                     # (parent index, sampled errors)
        for i, errs in enumerate(errors):
            if len(errs):
                groups += [(i, errs.sample(self.errors_per_gradient, generator)) for _ in range(self.n_gradients)]
        replies = self._ask([GRADIENT_TEMPLATE.format(prompt=parents[i], errors=e.describe(),
                                                      n=self.gradients_per_error) for i, e in groups],
                            "gradient", generator)
        feedback = [(i, e, g) for (i, e), r in zip(groups, replies)
                    for g in self._tagged(r, self.gradients_per_error, "gradient")]
        replies = self._ask([EDIT_TEMPLATE.format(prompt=parents[i], errors=e.describe(), gradient=g,
                                                  n=self.steps_per_gradient) for i, e, g in feedback],
                            "edit", generator)
        edits = [[] for _ in parents]
        for (i, e, g), r in zip(feedback, replies):
            for new in self._tagged(r, self.steps_per_gradient, "edit"):
                self.log.append({"parent": parents[i], "errors": e.describe(), "gradient": g, "edit": new})
                if new:
                    edits[i].append(new)
        flat = [s for i in range(len(parents)) for s in edits[i] + [parents[i]]]
        syn = iter(self.synonyms(flat, self.mc_samples, generator))
        children = []
        for i, parent in enumerate(parents):
            mc = [s for _ in edits[i] + [parent] for s in next(syn)]
            new = [s for s in dict.fromkeys(edits[i] + mc) if s != parent]
            if len(new) > self.max_expansion_factor:
                keep = torch.randperm(len(new), generator=generator, device=generator.device)
                new = [new[j] for j in sorted(keep[:self.max_expansion_factor].tolist())]
            children.append(new)
        return children


@dataclass
class MonteCarloExpander:
    """The gradient-free control (APO appendix Table 5, "MC"): ``count`` synonyms of each parent, the
    same synonym prompt and LLM, no errors shown; as many candidates per parent as APO keeps."""

    client: ChatClient
    count: int = 8
    temperature: float = 0.7
    max_tokens: int = 128
    outcomes: dict = field(default_factory=dict)

    def expand(self, parents, errors, generator):
        helper = GradientExpander(self.client, mc_samples=self.count, temperature=self.temperature,
                                  max_tokens={"synonym": self.max_tokens})
        out = helper.synonyms(list(parents), self.count, generator)
        for k, v in helper.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v
        return [[s for s in dict.fromkeys(children) if s != p] for p, children in zip(parents, out)]


# ---------------------------------------------------------------------------- the search
@dataclass
class APOConfig:
    """APO's sizes; the defaults are LMOps' ``main.py`` defaults (beam 4, 6 rounds, minibatch 64,
    4 gradients of 4 errors, 1 reason each, 1 edit each, 2 synonyms, at most 8 new prompts per
    parent, UCB over 8 rounds of 8 prompts x 32 examples = a budget of 2048 evaluations)."""

    beam_width: int = 4
    rounds: int = 6
    minibatch: int = 64
    n_gradients: int = 4
    errors_per_gradient: int = 4
    mc_samples: int = 2
    max_expansion_factor: int = 8
    selector: str = "ucb"
    samples_per_eval: int = 32
    eval_prompts_per_round: int = 8
    eval_rounds: int = 8

    def __post_init__(self):
        for name in ("beam_width", "rounds", "minibatch", "n_gradients", "errors_per_gradient",
                     "max_expansion_factor", "samples_per_eval", "eval_prompts_per_round", "eval_rounds"):
            check_int(name, getattr(self, name), min=1)
        check_int("mc_samples", self.mc_samples, min=0)
        check_choice("selector", self.selector, bandits.SELECTORS)

    @property
    def budget(self) -> int:
        """Example evaluations per round (LMOps: samples_per_eval x eval_rounds x eval_prompts_per_round)."""
        return self.samples_per_eval * self.eval_rounds * self.eval_prompts_per_round


@dataclass
class APORound:
    """One round: the beam (best first by the bandit's estimate), its estimates, and the pool size."""

    beam: list[str]
    estimates: list[float]
    candidates: int
    spend: int
    evaluations: int

    @property
    def best(self) -> str:
        return self.beam[0]


@dataclass
class APOResult:
    rounds: list[APORound]

    @property
    def best(self) -> str:
        return self.rounds[-1].best


class PromptArms:
    """Bandit arms that are task sections: a pull scores the chosen ones on one shared random minibatch of
    ``samples_per_eval`` training texts (as LMOps' UCB evaluator samples one batch per round)."""

    def __init__(self, classifier: LMClassifier, prompts: Sequence[str], train: LabeledTexts,
                 samples_per_eval: int, generator: torch.Generator):
        self.classifier, self.prompts, self.train = classifier, list(prompts), train
        self.m, self.generator = samples_per_eval, generator

    def __call__(self, arms: torch.Tensor) -> torch.Tensor:
        idx = torch.randperm(len(self.train), generator=self.generator, device=self.generator.device)[:self.m]
        batch = self.train.subset(idx.cpu().tolist())
        chosen = [self.prompts[int(a)] for a in arms[0]]
        return self.classifier.accuracy(chosen, batch)[None]


def find_errors(classifier: LMClassifier, task: str, batch: LabeledTexts) -> Errors:
    """The task section's mistakes on ``batch``."""
    pred = classifier.predictions(task, batch.texts)
    words = classifier.label_words
    wrong = (pred != batch.labels.cpu()).nonzero().flatten().tolist()
    return Errors([batch.texts[i] for i in wrong], [words[int(batch.labels[i])] for i in wrong],
                  [words[int(pred[i])] for i in wrong])


def apo_search(classifier: LMClassifier, seed_task: str, expander: Expander, train: LabeledTexts,
               config: APOConfig, generator: torch.Generator, desc: str = "APO rounds") -> APOResult:
    """Beam search over task sections (Pryzant et al. 2023, Alg. 1; LMOps ``main.py``).

    Round 0 is the seed. Each round draws one training minibatch, finds every beam prompt's errors on
    it, expands (children plus the parents themselves), and lets the bandit keep ``beam_width``
    candidates, best first by its estimate; the search's answer is the top of the last beam. Only
    training data are read: dev and test are for the caller.
    """
    if not isinstance(seed_task, str) or not seed_task.strip():
        raise ValueError(f"parameter 'seed_task': got {seed_task!r}; APO edits an existing prompt")
    beam = [seed_task]
    rounds = [APORound(beam, [float("nan")], 1, 0, classifier.evaluations)]
    for _ in progress(range(config.rounds), desc=desc):
        index = torch.randperm(len(train), generator=generator, device=generator.device)[:config.minibatch]
        batch = train.subset(index.cpu().tolist())
        errors = [find_errors(classifier, p, batch) for p in beam]
        children = expander.expand(beam, errors, generator)
        candidates = list(dict.fromkeys([c for kids in children for c in kids] + beam))
        if len(candidates) > config.beam_width:
            arms = PromptArms(classifier, candidates, train, config.samples_per_eval, generator)
            sel = bandits.select_top(config.selector, arms, len(candidates), config.beam_width, config.budget,
                                     samples_per_pull=config.samples_per_eval,
                                     arms_per_round=config.eval_prompts_per_round, generator=generator)
            order = sel.top[0].tolist()
            estimates = sel.means[0, order].tolist()
            beam, spend = [candidates[i] for i in order], int(sel.spend[0])
        else:
            beam, estimates, spend = candidates, [float("nan")] * len(candidates), 0
        rounds.append(APORound(beam, estimates, len(candidates), spend, classifier.evaluations))
    return APOResult(rounds)
