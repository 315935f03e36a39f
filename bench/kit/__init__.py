"""Layer 1, the kit: building blocks that methods, tasks and models share, on the core contracts
only — the procedural world (``world``), real-data loaders (``realdata``), fitted-state caching
(``fitting``), SAEs (``sae``), steering directions (``steering``), read-outs (``readout``), weight
edits (``editing``), image operations (``imageops``), source digests (``digests``) and work shared
by a task's cells (``shared``). See ``bench/__init__.py`` for the layer order."""
