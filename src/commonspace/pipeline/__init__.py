"""pipeline: sharded, resumable embedding runs (embed, readers, shards) and the end-to-end demo
(demo). Imports the encoders, fusion, learning, metrics and index packages lazily."""
