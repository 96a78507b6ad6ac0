"""One module per ``vlabus`` subcommand; each exposes ``register(subparsers)``."""
