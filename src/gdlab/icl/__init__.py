"""In-context learning as gradient descent (chapter 1).

* :mod:`gdlab.icl.tasks`: in-context linear-regression task samplers;
* :mod:`gdlab.icl.lsa`: linear self-attention (also recurrent), its GD and GD++ constructions, batched training;
* :mod:`gdlab.icl.learners`: GD, GD++, ridge, least squares, averaging and their closed forms;
* :mod:`gdlab.icl.transformer`: a small causal GPT-2-like transformer (Garg/Akyürek layout);
* :mod:`gdlab.icl.metrics`: preds diff, model cos, SPD, ILWD, interpolation;
* :mod:`gdlab.icl.probes`: linear probes of a transformer's hidden states and its implicit weights (Akyürek);
* :mod:`gdlab.icl.dual`: Dai et al.'s dual form of linear attention and momentum attention;
* :mod:`gdlab.icl.training`: training schedules (cool-down for the LSAs, warm-up + cosine for the transformers).
"""
from gdlab.icl import dual, learners, lsa, metrics, probes, tasks, training, transformer

__all__ = ["dual", "learners", "lsa", "metrics", "probes", "tasks", "training", "transformer"]
