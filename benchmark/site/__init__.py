"""``bench site``: a static website of the leaderboards, the study figures and claims, and the timing history
(:mod:`benchmark.site.build` writes it, :mod:`benchmark.site.data` computes its rows; ``docs/site.md``)."""
