"""Token-space gradient descent for labeling a feature (Schulz & Fallows 2025).

The label is a distribution p = softmax(v) over the vocabulary, fed to the encoder as one
"soft token" e = E^T p in a slot. Gradient descent on v minimizes

    L(v) = classification loss + c_ent * H(p) + lambda_nat * E_p[prior cost],

so that p concentrates (the entropy term) on one token that makes the feature predictable.
Schulz & Fallows use a language model's log-probability as the naturalness prior; MiniLM
has no LM head, so the substitute here is stated explicitly: the support is restricted to
whole words (alphabetic WordPiece tokens without '##', excluding the feature's own examples)
and the prior cost of token w is log(1 + frequency rank of w), BERT's vocabulary being in
rough frequency order after its first 1996 entries (a Zipf-style prior favouring common words;
off by default: at 0.05 it already pulls every label to "the"). By default only the hard part
of the prior acts: the label lives on the 5000 most frequent whole words.

Two choices are ours and stated: by default the slot holds the argmax token in the forward pass
with the gradient taken through p (straight-through; blends of embeddings otherwise create
optima that no real token attains), and the final top-5 tokens of each run are re-evaluated
exactly (the readout refitted, :func:`refit_loss`), as AutoPrompt re-evaluates its top candidates;
:func:`label_features` keeps the best of a few random restarts by that exact loss.

The classifier: the feature is read off as sigma(a (cos(enc(x), enc([CLS] e [SEP])) - b)) with
two learned scalars a and b; enc(x) does not depend on the label, so it is encoded once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from gdlab.prompts.encoder import Encoder
from gdlab.prompts.tasks import FIRST_WORD_ID, whole_word_ids
from gdlab.runtime import check_float, check_int, progress

__all__ = ["LabelDescent", "label_vocabulary", "refit_losses", "refit_loss", "TokenVectors",
           "describe_features", "label_features"]


@dataclass
class LabelDescent:
    """Trajectory of token-space descent: per logged step, entropy H(p) (nats) and argmax label."""

    steps: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    top_probability: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    top5: list[str] = field(default_factory=list)
    refit_label: str = ""             # the best of the final top-5 tokens, re-evaluated exactly
    refit_loss: float = float("nan")  # its BCE with the readout (a, b) refitted
    # filled by :func:`label_features` (the references the descent is judged against)
    exhaustive_label: str = ""        # the best of all candidate words, every one re-evaluated exactly
    refit_rank: int = -1              # rank of ``refit_label`` among all candidates by exact loss (0 = best)
    random_label: str = ""            # the best of as many random candidates as the descent re-evaluates
    candidates: int = 0               # how many words the label could be

    @property
    def final_label(self) -> str:
        return self.label[-1]


def label_vocabulary(encoder: Encoder, exclude: Sequence[int] = (), size: int = 5000) -> torch.Tensor:
    """Ids the label may use: the ``size`` most frequent whole words of >= 3 letters, minus ``exclude``."""
    excluded = set(int(i) for i in exclude)
    return torch.tensor([i for i in whole_word_ids(encoder.tokenizer)[:size] if i not in excluded])


def refit_losses(scores: torch.Tensor, y: torch.Tensor, iters: int = 30, l2: float = 1e-4,
                 dtype: torch.dtype = torch.float64, tol: float = 1e-9) -> torch.Tensor:
    """Mean BCE (K,) of the best 1-D logistic readout sigma(w s_k + c) of each row of ``scores`` (K, N)
    for 0/1 ``y`` (N,), by Newton's method on all K rows at once.

    Used to re-evaluate labels exactly: during descent the readout's (a, b) lag behind the
    token, so the final loss of a run that switched token late is not comparable across runs.
    ``l2`` (on w) keeps separable data finite. Iterations stop early once no row's step exceeds ``tol``
    (relative); ``dtype`` float32 halves the cost of an exhaustive search over thousands of rows.
    """
    s, t = scores.to(dtype), y.to(dtype).flatten()
    n = t.numel()
    w = torch.zeros(s.shape[0], dtype=dtype, device=s.device)
    c = torch.zeros_like(w)
    for _ in range(iters):
        q = torch.sigmoid(w[:, None] * s + c[:, None])
        r, v = q - t, q * (1 - q)
        gw, gc = (r * s).sum(1) / n + l2 * w, r.sum(1) / n
        hww = (v * s * s).sum(1) / n + l2 + 1e-9
        hwc, hcc = (v * s).sum(1) / n, v.sum(1) / n + 1e-9
        det = hww * hcc - hwc * hwc                     # the 2x2 Newton system, solved in closed form
        dw, dc = (hcc * gw - hwc * gc) / det, (hww * gc - hwc * gw) / det
        w, c = w - dw, c - dc
        if float(torch.maximum(dw.abs() / (1 + w.abs()), dc.abs() / (1 + c.abs())).max()) < tol:
            break
    return torch.nn.functional.binary_cross_entropy_with_logits(w[:, None] * s + c[:, None], t.expand_as(s),
                                                                reduction="none").mean(1)


def refit_loss(scores: torch.Tensor, y: torch.Tensor, iters: int = 30, l2: float = 1e-4) -> float:
    """:func:`refit_losses` of one score vector."""
    return float(refit_losses(scores.flatten()[None], y, iters, l2)[0])


class TokenVectors:
    """Unit vectors of single tokens encoded as ``[CLS] token [SEP]``, computed once per token and shared."""

    def __init__(self, encoder: Encoder):
        self.encoder, self.row, self.z = encoder, {}, None

    def add(self, ids) -> None:
        new = sorted(int(i) for i in set(ids) if int(i) not in self.row)
        if new:
            z = _encode_tokens(self.encoder, new)
            self.z = z if self.z is None else torch.cat([self.z, z])
            self.row.update({i: len(self.row) + k for k, i in enumerate(new)})

    def __getitem__(self, ids) -> torch.Tensor:
        return self.z[torch.tensor([self.row[int(i)] for i in ids], device=self.z.device)]


@torch.no_grad()
def _encode_tokens(encoder: Encoder, ids: Sequence[int], chunk: int = 1024) -> torch.Tensor:
    """Unit vectors (len(ids), d) of each token id encoded alone, as ``[CLS] token [SEP]``."""
    return torch.cat([encoder.encode_ids(*encoder.pad([[encoder.cls_id, int(i), encoder.sep_id]
                                                       for i in ids[start:start + chunk]]))
                      for start in range(0, len(ids), chunk)])


def describe_features(encoder: Encoder, features: Sequence[tuple[Sequence[int], torch.Tensor, Sequence[int]]], *,
                      steps: int = 100, lr: float = 0.1, c_ent: float = 0.05, lambda_nat: float = 0.0,
                      straight_through: bool = True, vocabulary_size: int = 5000, init_scale: float = 0.01,
                      log_every: int = 5, generator: torch.Generator,
                      token_vectors: "TokenVectors | None" = None) -> list[LabelDescent]:
    """Find a one-token label for each binary feature by gradient descent in token space, all at once.

    ``features`` holds (token ids, 0/1 labels, ids excluded from the label: the feature's instances).
    Each feature has its own v; the label vectors of all features go through the encoder as one batch.
    ``c_ent`` multiplies H(p) and is ramped linearly from 0 over the first half of the run, so that
    p first finds a direction and then commits to one token (Schulz & Fallows 2025, Sec. 3).
    With ``straight_through`` the slot holds the argmax token's embedding in the forward pass and
    the gradient flows through p (Bengio et al. 2013): the encoder then only ever sees real tokens,
    which avoids optima that exist only for blends of embeddings.
    """
    steps = check_int("steps", steps, min=1)
    lr = check_float("lr", lr, min=0.0, open_min=True)
    c_ent = check_float("c_ent", c_ent, min=0.0)
    lambda_nat = check_float("lambda_nat", lambda_nat, min=0.0)
    vocabulary_size = check_int("vocabulary_size", vocabulary_size, min=2)
    device, F = encoder.device, len(features)
    vocab = label_vocabulary(encoder, (), vocabulary_size).to(device)
    allowed = torch.ones(F, len(vocab), dtype=torch.bool, device=device)
    for f, (ids, labels, exclude) in enumerate(features):
        banned = torch.tensor(sorted(set(int(i) for i in exclude) | {int(i) for i, y in zip(ids, labels.tolist()) if y}),
                              dtype=torch.long, device=device)
        allowed[f] = ~torch.isin(vocab, banned)
    E = encoder.E[vocab]                                            # (V, d)
    prior_cost = torch.log1p((vocab - FIRST_WORD_ID).float())       # naturalness substitute (soft part)
    vectors = TokenVectors(encoder) if token_vectors is None else token_vectors
    vectors.add({int(i) for ids, _, _ in features for i in ids})  # runs share examples: encode each token once
    z_x = [vectors[ids] for ids, _, _ in features]
    ys = [labels.to(device).float() for _, labels, _ in features]
    v = (init_scale * torch.randn(F, len(vocab), generator=generator, device=generator.device)).to(device)
    v.requires_grad_(True)
    a = torch.full((F,), 10.0, device=device, requires_grad=True)
    b = torch.full((F,), 0.2, device=device, requires_grad=True)
    opt = torch.optim.Adam([{"params": [v], "lr": lr}, {"params": [a, b], "lr": 0.05}])
    cls, sep = encoder.E[encoder.cls_id].expand(F, 1, -1), encoder.E[encoder.sep_id].expand(F, 1, -1)
    ones = torch.ones(F, 3, dtype=torch.long, device=device)
    out = [LabelDescent() for _ in features]
    for step in progress(range(steps + 1), desc="token descent"):
        p = v.masked_fill(~allowed, -torch.inf).softmax(-1)          # p = softmax(v) on the allowed words
        if straight_through:
            hard = torch.nn.functional.one_hot(p.argmax(-1), len(vocab)).to(p)
            e = (hard + p - p.detach()) @ E
        else:
            e = p @ E                                                # e = E^T p
        z_label = encoder.encode_embeds(torch.cat([cls, e[:, None], sep], dim=1), ones)
        bce = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(a[f] * (z_x[f] @ z_label[f] - b[f]), ys[f])
                           for f in range(F)])
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
        ramp = min(1.0, step / (0.5 * steps))
        loss = (bce + c_ent * ramp * entropy + lambda_nat * (p * prior_cost).sum(-1)).sum()
        if step % log_every == 0 or step == steps:
            top = p.detach().topk(5, dim=-1)
            for f, rec in enumerate(out):
                rec.steps.append(step)
                rec.entropy.append(float(entropy[f].detach()))
                rec.label.append(encoder.decode([int(vocab[top.indices[f, 0]])]))
                rec.top_probability.append(float(top.values[f, 0]))
                rec.loss.append(float(bce[f].detach()))
                rec.top5 = [encoder.decode([int(vocab[i])]) for i in top.indices[f]]
        if step == steps:
            # exact re-evaluation of each run's final top-5 tokens (readout refitted)
            top = vocab[p.detach().topk(min(5, len(vocab)), dim=-1).indices]        # (F, 5)
            vectors.add(top.flatten().tolist())
            z_top = vectors[top.flatten().tolist()].reshape(F, top.shape[1], -1)
            for f, rec in enumerate(out):
                losses = refit_losses(z_top[f] @ z_x[f].T, ys[f]).tolist()
                j = min(range(len(losses)), key=losses.__getitem__)
                rec.refit_loss, rec.refit_label = losses[j], encoder.decode([int(top[f, j])])
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return out


def label_features(encoder: Encoder, names: Sequence[str], *, replicates: int = 3, restarts: int = 6, seed: int = 0,
                   n_positive: int = 256, n_negative: int = 512, **descent_kw) -> dict[str, list[LabelDescent]]:
    """Label each feature in ``replicates`` independent replicates (fresh example samples), keeping the
    best of ``restarts`` random initializations in each by the exact loss of its re-evaluated label
    (``refit_label``: the best of its final top-5 tokens, the readout refitted; restarts, then exact
    re-evaluation, as AutoPrompt re-evaluates its candidates). All runs go through the encoder as one batch.

    Each replicate's result also carries two references computed on the same sample: an exhaustive
    search (every candidate word re-evaluated exactly: ``exhaustive_label``, and ``refit_rank``, the
    descent label's rank in it) and a random control (as many random candidates as the descent
    re-evaluates, the best of them by the same exact loss: ``random_label``).
    """
    from gdlab.prompts.tasks import feature_instances, vocabulary_feature

    replicates = check_int("replicates", replicates, min=1)
    restarts = check_int("restarts", restarts, min=1)
    runs, samples = [], []
    for name in names:
        exclude = feature_instances(name, encoder.tokenizer)
        for r in range(replicates):
            ids, y = vocabulary_feature(name, encoder.tokenizer, n_positive=n_positive, n_negative=n_negative,
                                        seed=replicates * seed + r)
            runs += [(ids, y, exclude)] * restarts
            samples.append((ids, y, exclude))
    g = torch.Generator().manual_seed(seed)
    vocab = label_vocabulary(encoder, (), descent_kw.get("vocabulary_size", 5000))
    vectors = TokenVectors(encoder)
    vectors.add(set(vocab.tolist()) | {int(t) for ids, _, _ in samples for t in ids})   # one batch for all
    out = describe_features(encoder, runs, generator=g, token_vectors=vectors, **descent_kw)
    z_vocab = vectors[vocab.tolist()]
    result, i = {}, 0
    for name in names:
        result[name] = []
        for _ in range(replicates):
            best = min(out[i * restarts:(i + 1) * restarts], key=lambda d: d.refit_loss)
            ids, y, exclude = samples[i]
            banned = set(int(t) for t in exclude) | {int(t) for t, lab in zip(ids, y.tolist()) if lab}
            allowed = torch.tensor([int(t) not in banned for t in vocab.tolist()])
            z_x = vectors[ids]
            losses = refit_losses(z_vocab[allowed.to(z_vocab.device)] @ z_x.T, y.to(z_x.device),
                                  dtype=torch.float32, tol=1e-6).cpu()
            words = [encoder.decode([int(t)]) for t in vocab[allowed].tolist()]
            order = losses.argsort()
            best.exhaustive_label, best.candidates = words[int(order[0])], len(words)
            rank = {words[int(j)]: k for k, j in enumerate(order)}
            best.refit_rank = rank.get(best.refit_label, -1)
            pick = torch.randperm(len(words), generator=g)[:len(best.top5)]
            best.random_label = words[int(pick[losses[pick].argmin()])]
            result[name].append(best)
            i += 1
    return result
