"""Implicit regularization: which solution gradient descent picks when many fit (Chapter 2).

Modules, one idea each:

- :mod:`gdlab.implicit.sensing`: matrix sensing with ``U U^T`` / ``F G^T`` factorizations, small
  initialization and incremental learning (Gunasekar et al. 2017; Li, Ma & Zhang 2018; Jin et al. 2023;
  Xiong, Ding & Du 2023).
- :mod:`gdlab.implicit.tubal`: the t-product and GD on tubal tensor factorizations (Karnik et al. 2024).
- :mod:`gdlab.implicit.diagonal`: diagonal linear networks and the exact ``Q_alpha`` interpolant
  (Woodworth et al. 2020).
- :mod:`gdlab.implicit.logistic`: logistic regression on separable data, max-margin (Soudry et al. 2018)
  and the perceptron limit (Tyurin 2024).
- :mod:`gdlab.implicit.subspace`: the gradient in the top Hessian eigenspace (Gur-Ari et al. 2018).
"""
from gdlab.implicit import diagonal, logistic, sensing, subspace, tubal

__all__ = ["diagonal", "logistic", "sensing", "subspace", "tubal"]
