"""How close a trained model is to a learner: losses, prediction differences, sensitivities, weights."""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import jacrev, vmap

from gdlab.icl.tasks import RegressionTasks

__all__ = ["half_mse", "preds_diff", "spd", "query_sensitivities", "model_cosine", "implicit_weights", "ilwd",
           "interpolate", "learner_spd", "error_curve", "best_ridge", "query_error", "gd_alignment"]


def half_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1/2 mean squared error over the last dimension (von Oswald et al. 2022's loss)."""
    return 0.5 * (prediction - target).pow(2).mean(-1)


def preds_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean ``|y_a - y_b|`` over the last dimension ("preds diff", von Oswald et al. 2022, Fig. 2)."""
    return (a - b).abs().mean(-1)


def spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared prediction difference E (y_a - y_b)^2 over the last dimension (Akyürek et al. 2022, Eq. 9)."""
    return (a - b).pow(2).mean(-1)


def query_sensitivities(predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                        tasks: RegressionTasks) -> torch.Tensor:
    """d y_hat / d x_q for every task, (B, d); ``predict(x, y, x_query)`` handles one unbatched task."""
    return vmap(jacrev(predict, argnums=2))(tasks.x, tasks.y, tasks.x_query)


def model_cosine(predict_a: Callable, predict_b: Callable, tasks: RegressionTasks) -> torch.Tensor:
    """Mean cosine between the two models' sensitivities d y_hat / d x_q ("model cos", von Oswald et al. 2022)."""
    sa, sb = query_sensitivities(predict_a, tasks), query_sensitivities(predict_b, tasks)
    return torch.nn.functional.cosine_similarity(sa, sb, dim=-1).mean()


def implicit_weights(predict: Callable[[RegressionTasks], torch.Tensor], tasks: RegressionTasks, *,
                     probes: int, generator: torch.Generator) -> torch.Tensor:
    """Linear weights w_hat a model implicitly uses on each context, by probing it at ``probes`` Gaussian queries
    and fitting y_hat = w_hat . x_q by least squares (Akyürek et al. 2022, Sec. 4.1). Returns (B, d)."""
    b, d = tasks.x.shape[0], tasks.d
    xq = torch.randn(b, probes, d, generator=generator, device=generator.device, dtype=tasks.x.dtype)
    probe = RegressionTasks(tasks.x.unsqueeze(1).expand(-1, probes, -1, -1), tasks.y.unsqueeze(1).expand(-1, probes, -1),
                            xq, torch.zeros(b, probes, dtype=xq.dtype, device=xq.device), tasks.w)
    y_hat = predict(probe)  # (B, probes)
    return torch.linalg.lstsq(xq, y_hat.unsqueeze(-1)).solution.squeeze(-1)


def ilwd(w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """Implicit linear weight difference E ||w_a - w_b||^2 (Akyürek et al. 2022, Eq. 10)."""
    return (w_a - w_b).pow(2).sum(-1).mean()


def interpolate(a: torch.Tensor, b: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """(1 - alpha) a + alpha b, the path between constructed and trained weights (von Oswald et al. 2022, Fig. 2).

    Written out rather than ``torch.lerp``, which rejects a CPU weight for CUDA tensors in older torch releases."""
    return a + float(alpha) * (b - a)


def learner_spd(prediction: torch.Tensor, tasks: RegressionTasks, lams, sigma: float = 0.0) -> dict:
    """SPD between ``prediction`` (…, n) of every prefix k = 0..n-1 and the classical learners on the same
    prefixes, averaged over prompts and over k = 1..n-1 (Akyürek et al. 2022, Sec. 4.1).

    Returns {"zero": , "GD": (one step with the Gaussian-optimal eta = k/(k+d+1+sigma^2)), "OLS": ,
    "ridge": tensor over ``lams``}; each value has the leading shape of ``prediction`` without (B, n).
    """
    from gdlab.icl import learners

    def spd_to(fn):
        return spd(prediction[..., 1:], learners.prefix_predictions(tasks.x, tasks.y, fn)[..., 1:]).mean(-1)

    return {"zero": prediction[..., 1:].pow(2).mean((-2, -1)),
            "GD": spd_to(lambda x, y: learners.tuned_one_step_weights(x, y, sigma)),
            "OLS": spd_to(learners.ols_weights),
            "ridge": torch.stack([spd_to(lambda x, y: learners.ridge_weights(x, y, lam)) for lam in lams], -1)}


def error_curve(prediction: torch.Tensor, tasks: RegressionTasks) -> torch.Tensor:
    """Garg et al. 2022's normalized error E (y_hat - y)^2 / d after k = 1..n-1 examples, averaged over the
    prompt dimension (second to last): prediction (…, B, n) -> (…, n - 1)."""
    return (prediction[..., 1:] - tasks.y[..., 1:]).pow(2).mean(-2) / tasks.d


def best_ridge(table: dict, lams) -> dict:
    """Summary of a :func:`learner_spd` table (one model): the best-matching ridge lambda* (0 = least
    squares), the SPD to one GD step and to least squares, and which of zero / GD / ridge matches best."""
    ridge = torch.cat([table["OLS"].reshape(1), table["ridge"].reshape(-1)])
    best = {"zero": float(table["zero"]), "GD": float(table["GD"]), "ridge": float(ridge.min())}
    return {"lambda*": ([0.0] + list(lams))[int(ridge.argmin())], "SPD GD": float(table["GD"]),
            "SPD OLS": float(table["OLS"]), "best": min(best, key=best.get)}


def query_error(prediction: torch.Tensor, tasks: RegressionTasks) -> float:
    """Normalized query error E (y_hat - y_q)^2 / d (Garg et al. 2022)."""
    return float((prediction - tasks.y_query).pow(2).mean() / tasks.d)


def gd_alignment(predict_batch: Callable, predict_task: Callable, tasks: RegressionTasks,
                 probe_tasks: RegressionTasks, eta: float) -> dict:
    """How closely a learner follows one GD step of size ``eta`` (von Oswald et al. 2022, Fig. 2).

    ``predict_batch(tasks) -> y_hat`` for a batch, ``predict_task(x, y, x_query)`` for one task. Returns the
    learner's loss relative to the GD step's, the model cosine (on ``probe_tasks``) and the relative error of
    its effective step: the least-squares slope of its predictions on the GD direction p = b^T x_q.
    """
    from gdlab.icl import learners

    p = learners.predict(learners.averaging_weights(tasks.x, tasks.y), tasks.x_query)
    gd = lambda x, y, xq: eta * learners.predict(learners.averaging_weights(x, y), xq)
    with torch.no_grad():
        pred = predict_batch(tasks)
        gd_loss = half_mse(eta * p, tasks.y_query)
    step = float((pred * p).sum() / p.pow(2).sum())
    return {"loss / GD": float(half_mse(pred, tasks.y_query) / gd_loss),
            "model cos": float(model_cosine(predict_task, gd, probe_tasks)),
            "step error": abs(step / eta - 1)}
