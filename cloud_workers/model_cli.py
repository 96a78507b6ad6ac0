"""``vlabus model publish``: release a safetensors weight file to the fleet.

Exit status 0 when every message was published, 1 on a bad file or key, 2 when the bus could
not be reached or refused a publish.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from schemas.errors import BusError
from vlabus.cli.busflags import add_bus_arguments, transport_options
from vlabus.cli.report import report


def register(sub: Any) -> None:
    parser = sub.add_parser("model", help="publish model releases")
    model = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    pub = model.add_parser("publish", help="sign a manifest and publish a weight file in chunks")
    pub.add_argument("--weights", required=True, metavar="FILE.safetensors")
    pub.add_argument("--name", required=True, help="model name (lowercase, digits, . _ -)")
    pub.add_argument("--version", required=True, type=int, metavar="N",
                     help="release version; robots accept only increasing versions")
    pub.add_argument("--keys", required=True, metavar="DIR", help="keyring holding the release key")
    add_bus_arguments(pub)
    pub.add_argument("--release-id", default="release", metavar="ID",
                     help="identity of the release key (default: release)")
    pub.add_argument("--expires-s", type=float, default=7 * 86400, metavar="S",
                     help="manifest lifetime in seconds (default 7 days)")
    pub.add_argument("--chunk-size", type=int, default=256 << 10, metavar="B",
                     help="bytes per chunk (default 262144)")
    pub.add_argument("--epoch", type=int, default=0, metavar="E",
                     help="release epoch (default 0): robots take a release key's manifests "
                          "only within their installed epoch")
    pub.add_argument("--root-keys", default=None, metavar="DIR",
                     help="recovery: sign with the offline root key in DIR instead of the "
                          "release key; robots accept it at a higher --epoch with any version "
                          "(docs/hardening.md)")
    pub.add_argument("--root-id", default="root", metavar="ID",
                     help="identity of the root key (default: root)")
    pub.add_argument("--json", action="store_true", help="print a JSON summary")
    pub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return report(asyncio.run(publish_command(args)), as_json=args.json,
                  command="vlabus model publish", human=_human)


def _human(summary: dict[str, Any]) -> str:
    return (f"published {summary['name']} v{summary['version']}: {summary['size']} bytes "
            f"in {summary['chunks']} chunks, sha256 {summary['sha256']}")


async def publish_command(args: argparse.Namespace) -> dict[str, Any]:
    from cloud_workers.publisher import build_release, publish_release, read_weights
    from security.keys import load_signer
    from vlabus.bus.wait import open_when_up
    from vlabus.wire import Encoder

    try:
        release = build_release(read_weights(args.weights), name=args.name,
                                version=args.version, chunk_size=args.chunk_size,
                                expires_s=args.expires_s, epoch=args.epoch,
                                metadata={"release_id": args.release_id})
        if args.root_keys is not None:
            signer = load_signer(args.root_keys, "root", args.root_id)
        else:
            signer = load_signer(args.keys, "release", args.release_id)
        options = transport_options(args, args.release_id, f"publisher-{args.release_id}")
    except (BusError, ValueError, OSError) as exc:
        return {"exit_code": 1, "error": str(exc)}
    try:
        transport = await open_when_up(args.bus, options, what="model publish",
                                       timeout_s=args.connect_timeout)
    except (BusError, OSError) as exc:
        return {"exit_code": 2, "error": f"cannot reach {args.bus}: {exc}"}
    manifest = release.manifest
    try:
        sent = await publish_release(transport, Encoder(signer), release)
    except BusError as exc:
        return {"exit_code": 2, "error": str(exc)}
    finally:
        await transport.close()
    return {"exit_code": 0, "name": manifest.name, "version": manifest.version,
            "epoch": manifest.epoch, "signed_by": signer.role,
            "size": manifest.size, "sha256": manifest.sha256, "chunks": len(release.chunks),
            "chunk_size": manifest.chunk_size, "expires_ns": manifest.expires_ns,
            "bytes_published": sent}
