"""Keys, signing and the replay guard. No network I/O."""

from security.keys import (
    ROLES,
    Keyring,
    PublicKey,
    Role,
    Signer,
    add_key,
    init_keyring,
    load_signer,
)
from security.replay import ReplayGuard

__all__ = [
    "ROLES", "Keyring", "PublicKey", "ReplayGuard", "Role", "Signer", "add_key",
    "init_keyring", "load_signer",
]
