"""A keyring for one service: every public key, and only that service's private keys.

``export_keyring(src, dst, private=["worker"])`` writes ``dst`` as a keyring directory holding
every ``ROLE/ID.pub.pem`` of ``src`` and the private keys selected by ``private`` (a role, all
of its identities; or ``ROLE/ID``, one). A worker container then mounts a keyring that cannot
sign as a robot or a release; the release private key stays with the release job. Running it
again brings ``dst`` up to date (keys removed from ``src`` are removed from ``dst``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from schemas.errors import KeyringError
from security.keys import KEY_ROLES


def selected(src: Path, private: Iterable[str]) -> list[Path]:
    """The private key files ``private`` names (``ROLE`` or ``ROLE/ID``); raises when one
    names nothing, so a typo never exports a keyring without its identity."""
    chosen: list[Path] = []
    for spec in private:
        role, _, ident = spec.partition("/")
        if role not in KEY_ROLES:
            raise KeyringError(f"{spec!r}: unknown role {role!r}; one of {', '.join(KEY_ROLES)}")
        found = sorted((src / role).glob(f"{ident or '*'}.key.pem"))
        if not found:
            raise KeyringError(f"{spec!r}: no private key in {src / role}")
        chosen += found
    return chosen


def export_keyring(src: str | Path, dst: str | Path, private: Iterable[str], *,
                   flat: bool = False, public: bool = True) -> list[str]:
    """Write ``dst`` (see the module docstring); returns the ``ROLE/ID`` private keys in it.

    ``flat`` writes ``ROLE.ID.pub.pem`` / ``ROLE.ID.key.pem`` side by side, the layout of a
    Kubernetes ConfigMap or Secret (``kubectl create secret generic --from-file=DST``), which
    :meth:`Keyring.load` and :func:`load_signer` read as well. ``public=False`` leaves the
    public keys out (one identity's Secret; the public keys go in a shared ConfigMap).
    """
    source, target = Path(src), Path(dst)
    if not source.is_dir():
        raise KeyringError(f"keyring directory {source} does not exist")
    keys = selected(source, private)
    wanted = {p.relative_to(source) for p in keys}
    if public:
        wanted |= {p.relative_to(source) for role in KEY_ROLES
                   for p in (source / role).glob("*.pub.pem")}

    def placed(relative: Path) -> Path:
        return Path(f"{relative.parent.name}.{relative.name}") if flat else relative

    names = {placed(r) for r in wanted}
    for folder in ([target] if flat else [target / role for role in KEY_ROLES]):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.pem"):
            if old.relative_to(target) not in names:
                old.unlink()
    for relative in sorted(wanted):
        destination = target / placed(relative)
        # copy to a temporary name, then rename: a watcher never reads half a key
        partial = destination.with_name(destination.name + ".part")
        shutil.copyfile(source / relative, partial)
        os.chmod(partial, 0o600 if relative.name.endswith(".key.pem") else 0o644)
        partial.replace(destination)
    return sorted(str(p.relative_to(source)).removesuffix(".key.pem") for p in keys)
