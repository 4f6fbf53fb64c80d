"""Offline first: when the Hugging Face hub is not tried, and what a missing model's hint says.

A model that is neither a local folder nor in the Hugging Face cache used to cost about 50 s
of download retries before its error, whenever ``HF_HUB_OFFLINE`` was not set. Now the hub is
not contacted at all when :func:`hub_offline` is true:

- ``COMMONSPACE_OFFLINE`` is set (to anything but ``0``, ``false``, ``no`` or empty), or
- ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set (the hub's own switches), or
- no network reaches the hub (one TCP connection to its host, at most ``PROBE_SECONDS``,
  checked once per process).

The library never changes ``os.environ``: :func:`offline_hub` switches the already imported
``huggingface_hub`` to offline mode for the duration of one model load (its module constant,
restored afterwards), and holds back what the model library logs on the root logger there
(open_clip's "Failed to download weights ..." came before the error it raises) unless the
load succeeds. The command line sets
``HF_HUB_OFFLINE=1`` itself unless ``--allow-download`` is given (``commonspace.cli.main``).

The download hint names the CLI of the installed huggingface_hub (``hf download REPO``;
``huggingface-cli`` is gone from it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from urllib.parse import urlparse

OFFLINE_ENV = "COMMONSPACE_OFFLINE"
PROBE_SECONDS = 1.5
_FALSE = ("", "0", "false", "no", "off")
_reachable: dict = {}  # endpoint -> bool, probed once per process


def _is_set(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in _FALSE


def hub_offline() -> bool:
    """True when models must come from local folders or the cache only (module docstring)."""
    if _is_set(OFFLINE_ENV) or _is_set("HF_HUB_OFFLINE") or _is_set("TRANSFORMERS_OFFLINE"):
        return True
    return not hub_reachable()


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the hub's host (``HF_ENDPOINT``, default huggingface.co)
    opens within ``timeout`` seconds; the answer is kept for the process."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if endpoint not in _reachable:
        url = urlparse(endpoint)
        host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http"
                                                                     else 443)
        result = []

        def probe():  # in a thread: a hanging DNS lookup has no timeout of its own
            try:
                with socket.create_connection((host, port), timeout=timeout):
                    result.append(True)
            except OSError:
                result.append(False)

        worker = threading.Thread(target=probe, daemon=True)
        worker.start()
        worker.join(timeout + 0.5)
        _reachable[endpoint] = bool(result and result[0])
    return _reachable[endpoint]


def download_hint(repo: str) -> str:
    """What to run once with network access to make ``repo`` load offline."""
    return (f"download it once with network access: hf download {repo} (the `hf` command of "
            "huggingface_hub; it then loads offline from the Hugging Face cache), or let "
            "commonspace download it: commonspace --allow-download ...")


def in_cache(repo: str, filename: str = "config.json") -> bool:
    """Whether ``filename`` of the hub repository ``repo`` is in the Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(repo, filename), str)
    except Exception:  # an invalid repository name: not cached either
        return False


OFFLINE_WHY = ("not in the Hugging Face cache, and the hub is not tried (COMMONSPACE_OFFLINE or "
               "HF_HUB_OFFLINE is set, the command line's default, or no network)")


def one_line(exc) -> str:
    """An exception's message on one line (library messages often span several)."""
    return " ".join(str(exc).split())


class _HoldRootRecords(logging.Filter):
    """Holds the records model libraries log on the root logger during one load (open_clip's
    "Parsing model identifier ...", "Failed to download weights ..."): replayed when the load
    succeeds, dropped when it fails, so a failed load prints its one-line error alone."""

    def __init__(self):
        super().__init__()
        self.held = []

    def filter(self, record):
        if record.name != "root" or "commonspace" in record.pathname:
            return True
        self.held.append(record)
        return False


@contextlib.contextmanager
def offline_hub(offline: bool):
    """While loading one model: the hub in offline mode when ``offline`` (no request, no
    retry: a missing file fails at once), and the model library's root-logger lines held back
    unless the load succeeds."""
    hold = _HoldRootRecords()
    root = logging.getLogger()
    root.addFilter(hold)
    constants = None
    if offline:
        try:
            from huggingface_hub import constants
        except ImportError:
            constants = None
    before = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    failed = True
    try:
        yield
        failed = False
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = before
        root.removeFilter(hold)
        if not failed:
            for record in hold.held:
                root.handle(record)
