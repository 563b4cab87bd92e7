"""Chapter 5: prompt optimization (soft prompts, first-order token swaps, token-space descent, bandits, APO)."""
# the submodules load heavy models: ``from gdlab.prompts import *`` imports none of them
__all__ = []
