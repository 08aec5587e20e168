"""Pretrained weights from the Hugging Face Hub that fail at once on a machine without network.

``huggingface_hub`` retries a failed request five times with growing pauses
(about a minute) before it looks at its cache. :func:`offline_unless_reachable`
first tries one connection to the hub (a few seconds at most); when there is
none, the downloads inside it read the local cache only, so cached weights
still load and missing ones fail in a second.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

from lit_vit._private import hub_offline

# Seconds one connection attempt to the hub may take.
CONNECT_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hugging Face Hub (``HF_ENDPOINT``) opens."""
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[None]:
    """Inside, the hub's downloads use the local cache only when the hub cannot be reached."""
    from huggingface_hub import constants

    if constants.is_offline_mode() or hub_reachable():
        yield
        return
    with hub_offline():
        yield
