"""Layer 5, the top: the library API (``api``: :func:`bench.evaluate`) and the command line
(``cli``), on everything below, the leaderboard included."""
