"""Stability of GD and SGD: what the step size selects (book chapter 4).

Modules, one idea each:

- :mod:`gdlab.stability.sgd_operator`: the exact mean-square operator of linearized SGD for batch
  size B and its critical step, with the sharpness / trace / Frobenius / non-uniformity bounds;
- :mod:`gdlab.stability.eos`: edge-of-stability training with sharpness tracking and gradient flow;
- :mod:`gdlab.stability.scalar_net`: the scalar network and its exact gradient-flow solution;
- :mod:`gdlab.stability.diagonal`: Wu & Su's stability selection on the diagonal linear network of
  :mod:`gdlab.implicit.diagonal` (shared with Chapter 2);
- :mod:`gdlab.stability.coherence`: Dexter et al.'s Hessian coherence and a designed-coherence
  construction;
- :mod:`gdlab.stability.spectrum`: the bulk-plus-outliers Hessian spectrum of a trained classifier;
- :mod:`gdlab.stability.fractal`: the batched grid trainer and box-counting dimension.

The Hessian tools (HVP, Lanczos, SLQ) are in :mod:`gdlab.hessian`.
"""
from gdlab.stability import coherence, diagonal, eos, fractal, scalar_net, sgd_operator, spectrum

__all__ = ["coherence", "diagonal", "eos", "fractal", "scalar_net", "sgd_operator", "spectrum"]
