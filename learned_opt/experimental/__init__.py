"""Learned-optimizer pieces measured as no gain, kept importable and tested, not recommended.

Nothing here is in ``learned_opt.__all__`` or in a ``meta-train`` preset; docs/findings.md says
what each was measured to do. They stay so that files written with them keep loading and an
experiment can compose them again.
"""

from learned_opt.experimental.normalize import NormalizeStep

# Registered names of the experimental pieces (kept out of the default conformance sweep:
# a piece with no meta-parameters has no meta-gradient to check).
NAMES = (NormalizeStep.name,)

__all__ = ["NAMES", "NormalizeStep"]
