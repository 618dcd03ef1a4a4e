"""The model hub, when it cannot be reached: find out once, fail fast, and say what to do.

Without this, every file lookup of a hub id retries five times over ~25 s before failing with a message that
names no recipe field. A single connection attempt decides: unreachable → offline mode (the local cache still
serves what was downloaded before), and a missing model is one line with the way out.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in OFFLINE_VARIABLES)


def is_hub_id(name: str) -> bool:
    return not Path(name).exists() and not name.startswith((".", "/", "~"))


@functools.cache
def reachable() -> bool:
    """One connection attempt to the hub's host (3 s at most), made only when a hub id is used."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return False
    return True


def prepare(name: str) -> None:
    """Before loading a hub id: switch to the local cache at once when the hub cannot be reached."""
    if offline() or not is_hub_id(name) or reachable():
        return
    from huggingface_hub import constants

    for variable in OFFLINE_VARIABLES:
        os.environ[variable] = "1"
    constants.HF_HUB_OFFLINE = True
    print("note: the model hub cannot be reached; using the local cache only (HF_HUB_OFFLINE=1)", file=sys.stderr)


def advice(name: str, field: str) -> str:
    """What to do about a hub id that is not in the local cache while offline."""
    return (
        f"`{name}` is not in the local cache and the hub is offline: download it where there is network "
        f"(`hf download {name} --local-dir DIR`) and set `{field}: DIR`, or run online"
    )
