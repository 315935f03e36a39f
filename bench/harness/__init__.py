"""Layer 3, the harness: planning and running grids (``runner``), the results store (``store``),
cell fingerprints (``identity``), reference validity (``validity``), and measurement of the
harness itself (``perf``, ``scale``). It sits on methods, tasks and models, under the leaderboard."""
