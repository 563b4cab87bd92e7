"""Double descent (Chapter 3). One module per idea:

- :mod:`~gdlab.double_descent.spectral`: least-squares solvers as spectral filters;
- :mod:`~gdlab.double_descent.random_features`: random-features regression across N = n,
  the ridgeless closed forms and the peak statistics (Belkin et al. 2019; Hastie et al. 2019;
  Nakkiran, Venkat, Kakade & Ma 2020);
- :mod:`~gdlab.double_descent.advani_saxe`: linear teacher-student GD dynamics and the
  Marchenko-Pastur spectrum (Advani & Saxe 2017);
- :mod:`~gdlab.double_descent.optimization_gate`: whether the optimizer reaches a low loss at
  N = n decides whether the peak appears (Liu & Flanigan 2023);
- :mod:`~gdlab.double_descent.deep`: model-wise and epoch-wise double descent of MLPs on
  MNIST-1D (Nakkiran et al. 2019; Greydanus 2020).
"""
from gdlab.double_descent.spectral import (condition_number, gd_gain, gd_solution, min_norm_solution,
                                           rank_cutoff, ridge_solution, spectral_solution)
from gdlab.double_descent.random_features import (FEATURE_KINDS, FeatureCurves, RandomFeatures,
                                                  feature_curves, isotropic_risk, max_relative_rise,
                                                  min_norm_filter, optimal_ridge_lambda, peak_prominence,
                                                  random_feature_map, ridgeless_risk, standardize)
from gdlab.double_descent.advani_saxe import (AdvaniSaxeCurves, advani_saxe_curves, gd_iterates,
                                              marchenko_pastur_density, marchenko_pastur_edges,
                                              spectral_gd_solution)
from gdlab.double_descent.optimization_gate import gd_filter, peak_summary
from gdlab.double_descent.deep import (GREYDANUS_FINAL, GREYDANUS_WIDTHS, epoch_wise_peak, model_wise_peak,
                                       peak_bootstrap, width_curves)

__all__ = ["spectral", "random_features", "advani_saxe", "optimization_gate", "deep",
           "condition_number", "gd_gain", "gd_solution", "min_norm_solution", "rank_cutoff",
           "ridge_solution", "spectral_solution", "FEATURE_KINDS", "FeatureCurves",
           "RandomFeatures", "feature_curves", "isotropic_risk", "max_relative_rise",
           "min_norm_filter", "optimal_ridge_lambda", "peak_prominence", "random_feature_map",
           "ridgeless_risk", "standardize", "AdvaniSaxeCurves", "advani_saxe_curves", "gd_iterates",
           "marchenko_pastur_density", "marchenko_pastur_edges", "spectral_gd_solution",
           "gd_filter", "peak_summary", "GREYDANUS_FINAL", "GREYDANUS_WIDTHS", "epoch_wise_peak",
           "model_wise_peak", "peak_bootstrap", "width_curves"]
