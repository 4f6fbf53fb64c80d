"""pipeline: sharded, resumable embedding runs (embed, readers, shards). Imports the encoders,
fusion, learning, metrics and index packages lazily. The end-to-end demo is an application:
:mod:`commonspace.apps.demo`."""
