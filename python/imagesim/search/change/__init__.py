"""`imagesim change`: what changed between acquisitions, per chip, ranked.

- :mod:`.pairs`: which chips are compared (the acquisitions of each quadkey, paired);
- :mod:`.pixels`: the pixel method (a radiometrically normalised difference);
- :mod:`.run`: the embedding method, the combined rank and the outputs (:func:`detect_changes`);
- :mod:`.evaluate`: precision, recall and average precision against known changes.
"""

from __future__ import annotations

from imagesim.search.change.pairs import Choice, parse_choice
from imagesim.search.change.pixels import PixelSettings
from imagesim.search.change.run import ChangeSettings, ChangeSummary, detect_changes

__all__ = ["Choice", "parse_choice", "PixelSettings", "ChangeSettings", "ChangeSummary", "detect_changes"]
