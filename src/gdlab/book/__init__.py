"""The book pipeline and the ``gdlab`` command.

- :mod:`gdlab.book.cli`: the command line (``gdlab run | book | claims | check-notebooks``);
- :mod:`gdlab.book.notebooks`: chapters as notebooks (jupytext conversion, the parameters cell,
  kept notebooks against their sources);
- :mod:`gdlab.book.colab`: the Colab install cell;
- :mod:`gdlab.book.run`: execution with papermill, nbval validation, several seeds, exit codes;
- :mod:`gdlab.book.records`: the claim records in ``_build/claims`` (atomic, failing closed);
- :mod:`gdlab.book.site`: the HTML book and its "Reproduction status" page.
"""
from gdlab.book.cli import build_book, check_notebooks, main, parse_parameters
from gdlab.book.colab import TAG as INSTALL_TAG
from gdlab.book.notebooks import (PipelineError, chapters, notebook_matches_source, repository_url,
                                  resolve_chapter, to_notebook)
from gdlab.book.run import EXIT, run_chapter, validate
from gdlab.book.site import status_page

__all__ = ["EXIT", "INSTALL_TAG", "PipelineError", "build_book", "chapters", "check_notebooks", "main",
           "notebook_matches_source", "parse_parameters", "repository_url", "resolve_chapter", "run_chapter",
           "status_page", "to_notebook", "validate"]
