"""Applications built on the library: the search service and its web page (:mod:`.serve`).

Apps sit above the pipeline and below the CLI: they may import every library layer (index,
pipeline, ...), and nothing imports them but ``commonspace.cli``. Their web dependencies
(FastAPI, uvicorn) are imported only by the modules that need them (``commonspace[serve]``).
"""
