"""Soft prompts: p free vectors in embedding space, tuned by gradient descent through the frozen encoder.

Lester et al. 2021 ("The Power of Scale for Parameter-Efficient Prompt Tuning") prepend p
trainable vectors and compare random, sampled-vocabulary and class-label initializations
(their Fig. 3b). Qin & Eisner 2021 ("Learning How to Ask") tune soft prompts for a masked LM,
find random initialization close to informed initialization, and combine several prompts as
a mixture p(y|x) = sum_k w_k p_k(y|x) whose weights are fitted by EM (their Sec. 3.2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from gdlab.prompts.classifier import Inputs, PromptClassifier
from gdlab.prompts.tasks import FIRST_WORD_ID, whole_word_ids
from gdlab.runtime import check_choice, check_float, check_int
from gdlab.train import fit

__all__ = ["INITS", "init_soft_prompt", "SoftPromptFit", "group_probabilities", "accuracy", "untuned",
           "linear_probe", "train_soft_prompts"]

INITS = ("random", "vocab", "label")


def init_soft_prompt(classifier: PromptClassifier, length: int, init: str, generator: torch.Generator,
                     common_words: int = 5000) -> torch.Tensor:
    """A (length, d) soft prompt initialized as in Lester et al. 2021, Sec. 3.

    ``"random"``: i.i.d. normal with the word embeddings' per-coordinate std; ``"vocab"``:
    embeddings of tokens drawn from the ``common_words`` most frequent whole words;
    ``"label"``: the class names' token embeddings, then sampled vocabulary to fill.
    """
    length = check_int("length", length, min=1)
    check_choice("init", init, INITS)
    enc = classifier.encoder
    E = enc.E
    if init == "random":
        noise = torch.randn(length, E.shape[1], generator=generator, device=generator.device)
        return (noise.to(E.device) * E[FIRST_WORD_ID:].std()).to(E.dtype)
    vocab = torch.as_tensor(whole_word_ids(enc.tokenizer)[:common_words])
    ids = vocab[torch.randint(len(vocab), (length,), generator=generator, device=generator.device).cpu()].tolist()
    if init == "label":
        label_ids = [i for t in classifier.label_texts for i in enc.token_ids(t)]
        ids = (label_ids + ids)[:length]
    return E[torch.as_tensor(ids, device=E.device)].clone()



@dataclass
class SoftPromptFit:
    """Result of :func:`train_soft_prompts`: one entry per model (a prompt or a mixture)."""

    names: list[str]
    prompt: torch.Tensor          # (K, p_max, d) tuned prompts
    mask: torch.Tensor            # (K, p_max) which slots each prompt uses
    groups: list[list[int]]       # prompt indices of each model
    weights: list[torch.Tensor]   # mixture weights of each model (EM)
    eval_steps: list[int] = field(default_factory=list)
    dev_accuracy: list[list[float]] = field(default_factory=list)  # [eval point][model]
    loss: list[float] = field(default_factory=list)


def group_probabilities(classifier: PromptClassifier, fitted: SoftPromptFit, inputs: Inputs) -> torch.Tensor:
    """Class probabilities (models, N, C): sum_k w_k softmax(s(P_k, x)) for each model (Qin & Eisner 2021, Eq. 3)."""
    out = torch.empty(len(fitted.groups), len(inputs), len(classifier.label_texts), device=classifier.device)
    with torch.no_grad():
        for rows, part in inputs.chunks(max(1, 2048 // len(fitted.prompt))):
            p = classifier.logits(fitted.prompt, fitted.mask, part).softmax(-1)
            out[:, rows.to(out.device)] = torch.stack([(w.to(p)[:, None, None] * p[g]).sum(0)
                                                       for g, w in zip(fitted.groups, fitted.weights)])
    return out


def accuracy(classifier: PromptClassifier, fitted: SoftPromptFit, inputs: Inputs) -> torch.Tensor:
    """Accuracy (models,) of each tuned model on ``inputs``."""
    return (group_probabilities(classifier, fitted, inputs).argmax(-1) == inputs.labels).float().mean(1)


def untuned(classifier: PromptClassifier, prompts: Sequence[torch.Tensor], *, names: Sequence[str],
            groups: Sequence[Sequence[int]] | None = None) -> SoftPromptFit:
    """The prompts as they start, packed like a fit (mixtures with uniform weights): the control of tuning."""
    groups = [list(g) for g in (groups if groups is not None else [[k] for k in range(len(prompts))])]
    if len(names) != len(groups):
        raise ValueError(f"parameter 'names': got {len(names)} names for {len(groups)} models")
    device, d = classifier.device, prompts[0].shape[-1]
    p_max = max(p.shape[0] for p in prompts)
    P = torch.zeros(len(prompts), p_max, d, device=device)
    mask = torch.zeros(len(prompts), p_max, dtype=torch.long, device=device)
    for k, p in enumerate(prompts):
        P[k, :p.shape[0]], mask[k, :p.shape[0]] = p.to(device), 1
    return SoftPromptFit(list(names), P, mask, groups, [torch.full((len(g),), 1 / len(g)) for g in groups])


@torch.no_grad()
def linear_probe(classifier: PromptClassifier, train: Inputs, dev: Inputs, test: Inputs,
                 cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0)) -> dict:
    """A logistic-regression probe on the frozen, unprompted sentence vectors enc([CLS] x [SEP]): the
    baseline that prompt tuning must be compared with (it trains 385 numbers on the same words).
    Features are standardized on train; the inverse regularization C is chosen on dev among ``cs``.
    Returns test accuracy, the chosen C and its dev accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    no_prompt = classifier.embed_prompts([[]])

    def features(inputs):
        z = torch.empty(len(inputs), classifier.encoder.E.shape[1], device=classifier.device)
        for rows, part in inputs.chunks(512):
            z[rows.to(z.device)] = classifier.embed(*no_prompt, part)[0]
        return z.cpu().numpy(), inputs.labels.cpu().numpy()

    (xtr, ytr), (xdv, ydv), (xte, yte) = features(train), features(dev), features(test)
    scale = StandardScaler().fit(xtr)
    fits = {c: LogisticRegression(C=c, max_iter=2000).fit(scale.transform(xtr), ytr) for c in cs}
    dev_acc = {c: f.score(scale.transform(xdv), ydv) for c, f in fits.items()}
    best = max(cs, key=lambda c: (dev_acc[c], -c))
    return {"test": float(fits[best].score(scale.transform(xte), yte)), "C": best, "dev": float(dev_acc[best])}


def train_soft_prompts(classifier: PromptClassifier, prompts: Sequence[torch.Tensor], train: Inputs, dev: Inputs,
                       *, names: Sequence[str], groups: Sequence[Sequence[int]] | None = None, steps: int = 30,
                       lr: float = 0.05, batch_size: int = 16, eval_every: int = 10, em_rate: float = 0.2,
                       generator: torch.Generator) -> SoftPromptFit:
    """Tune K soft prompts at once (one batched forward per step) with Adam on cross-entropy.

    A group with several prompts is a mixture: its loss is -log sum_k w_k p_k(y|x), and after
    each step the weights move toward the mean EM responsibility r_k = w_k p_k(y|x) / sum_j w_j p_j(y|x)
    (stochastic EM with rate ``em_rate``; Qin & Eisner 2021, Sec. 3.2). All prompts share each minibatch.
    """
    steps = check_int("steps", steps, min=1)
    batch_size = check_int("batch_size", batch_size, min=1, max=len(train))
    eval_every = check_int("eval_every", eval_every, min=1)
    em_rate = check_float("em_rate", em_rate, min=0.0, max=1.0)
    result = untuned(classifier, prompts, names=names, groups=groups)
    P, mask = result.prompt, result.mask
    P.requires_grad_(True)

    def record(step):
        result.eval_steps.append(step)
        result.dev_accuracy.append(accuracy(classifier, result, dev).tolist())

    def loss_fn(step):
        if step % eval_every == 0:
            record(step)
        batch = train.take(torch.randperm(len(train), generator=generator, device=generator.device)[:batch_size])
        logp = classifier.logits(P, mask, batch).log_softmax(-1)
        ll = logp.gather(-1, batch.labels.expand(len(prompts), -1).unsqueeze(-1)).squeeze(-1)  # (K, B)
        total = 0.0
        for g, w in zip(groups, result.weights):
            joint = ll[g] + w.to(ll).log()[:, None]
            total = total - torch.logsumexp(joint, 0).mean()
            with torch.no_grad():  # E-step on this minibatch, then a damped M-step for w
                w.mul_(1 - em_rate).add_(em_rate * joint.softmax(0).mean(1).cpu())
        return total

    hist = fit([P], loss_fn, steps, optimizer="adam", lr=lr, log_every=1, desc="soft prompts")
    result.loss = hist.loss
    record(steps)
    P.requires_grad_(False)
    return result
