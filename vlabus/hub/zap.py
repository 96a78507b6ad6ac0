"""The hub's ZAP handler for CurveZMQ, naming each client, and reading that name back."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from security.curve import authorized_dir, load_hub_keys
from vlabus.hub.access import curve_names

log = logging.getLogger("vlabus.hub.server")

ZAP_DOMAIN = "vlabus"


class NamingAuthenticator(ThreadAuthenticator):
    """The ZAP handler, naming each admitted client after its ``authorized/NAME.key`` file:
    libzmq then gives every frame that client sends the ``User-Id`` property ``NAME``."""

    def __init__(self, names: dict[bytes, str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._names = names

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._names.get(client_public_key, "")

    def reload(self, curve_dir: Path) -> int:
        """Re-read ``authorized/``; returns how many clients it admits now."""
        allowed = authorized_dir(curve_dir)
        names = curve_names(allowed)
        self._names = names  # one reference swap: the ZAP thread reads it
        self.configure_curve(domain=ZAP_DOMAIN, location=str(allowed))
        return len(names)


def serve_curve(router: zmq.Socket[Any], curve_dir: Path,
                ctx: zmq.Context[Any]) -> NamingAuthenticator:
    """Make ``router`` a CurveZMQ server whose clients must be in ``curve_dir/authorized``,
    enforced by a started ZAP handler (returned; stop it with the hub). Without a handler
    answering, ``ZAP_ENFORCE_DOMAIN`` refuses everyone instead of admitting them (trap 6)."""
    public, secret = load_hub_keys(curve_dir)
    allowed = authorized_dir(curve_dir)
    auth = NamingAuthenticator(curve_names(allowed), ctx, log=log)
    auth.start()
    auth.configure_curve(domain=ZAP_DOMAIN, location=str(allowed))
    router.curve_server = True
    router.curve_publickey = public
    router.curve_secretkey = secret
    router.zap_domain = ZAP_DOMAIN.encode()
    router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    return auth


def frame_user(frame: zmq.Frame) -> str:
    """The CURVE identity the ZAP handler gave the frame's connection; "" without one."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:
        return ""
