"""The Triton model repository: hand-written configs (``configs/``), python models (``models/``), the writer
that assembles a servable repository for a target (``layout``), and the local server launcher (``server``)."""
