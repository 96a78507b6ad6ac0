"""Keys, signing and the replay guard. No network I/O."""

from security.keys import (
    KEY_ROLES,
    POOL,
    ROLES,
    Keyring,
    PublicKey,
    Role,
    Signer,
    add_key,
    add_pool_key,
    init_keyring,
    load_pool_key,
    load_pool_secret,
    load_signer,
)
from security.replay import ReplayGuard
from security.seal import Opener, PoolKey, PoolSecret, Sealer

__all__ = [
    "KEY_ROLES", "POOL", "ROLES", "Keyring", "Opener", "PoolKey", "PoolSecret", "PublicKey",
    "ReplayGuard", "Role", "Sealer", "Signer", "add_key", "add_pool_key", "init_keyring",
    "load_pool_key", "load_pool_secret", "load_signer",
]
