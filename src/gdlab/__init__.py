"""gdlab: the library behind "Gradient Descent, Reproduced".

Cross-cutting modules: :mod:`gdlab.runtime`, :mod:`gdlab.claims`, :mod:`gdlab.plotting`,
:mod:`gdlab.train`, :mod:`gdlab.data`, :mod:`gdlab.notebook`, :mod:`gdlab.book` (the pipeline).
Per phenomenon: :mod:`gdlab.icl` and the chapters' own modules.
"""
from gdlab.claims import Claims, Control
from gdlab.notebook import glue
from gdlab.runtime import Runtime, setup

__version__ = "0.1.0"
__all__ = ["Claims", "Control", "Runtime", "glue", "setup", "__version__"]
