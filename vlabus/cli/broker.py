"""``vlabus broker render|run|sync``: Mosquitto configuration for a keyring, a local broker, and
the running fleet broker's access control brought in line with the keyring."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from schemas.errors import BusError


def register(sub: Any) -> None:
    parser = sub.add_parser("broker", help="render and run a Mosquitto configuration")
    broker = parser.add_subparsers(dest="broker_command", required=True, metavar="ACTION")

    render = broker.add_parser("render", help="write config, ACLs, passwords and TLS material")
    render.add_argument("--keys", required=True, help="keyring directory (vlabus keys init)")
    render.add_argument("--out", required=True, help="directory to write the configuration to")
    render.add_argument("--tls", action="store_true",
                        help="fleet configuration: TLS client certificates and access control "
                             "(default: dev, loopback with passwords)")
    render.add_argument("--bind", default="127.0.0.1", help="listener address (127.0.0.1)")
    render.add_argument("--port", type=int, default=None, help="listener port (1883, TLS 8883)")
    render.add_argument("--hostname", action="append", default=None,
                        help="DNS name for the broker certificate (repeatable; localhost)")
    render.add_argument("--log-stdout", action="store_true",
                        help="the broker logs to stdout (containers) instead of OUT/mosquitto.log")
    render.add_argument("--dynsec-plugin", default=None, metavar="PATH",
                        help="the dynamic-security plugin as the broker's host sees it "
                             "(default: found on this machine; eclipse-mosquitto images: "
                             "/usr/lib/mosquitto_dynamic_security.so)")
    render.add_argument("--config-dir", default=None, metavar="DIR",
                        help="where the broker will read these files, when not --out (e.g. "
                             "a Kubernetes volume); the paths in mosquitto.conf use it")
    site = render.add_argument_group(
        "site broker", "a Mosquitto for one site's robots, bridged to the cloud broker over "
        "MQTT 5 + mutual TLS (implies --tls); see docs/network.md")
    site.add_argument("--site", default=None, metavar="NAME",
                      help="render a site broker; its bridge identity is site-NAME")
    site.add_argument("--uplink", default=None, metavar="mqtts://HOST:PORT",
                      help="the cloud broker the site bridges to")
    site.add_argument("--cloud-config", default=None, metavar="DIR", type=Path,
                      help="the cloud broker's directory (render --tls): its CA signs the "
                           "site's certificate, its access rules get the site's role")
    site.add_argument("--robot", action="append", default=None, metavar="ID",
                      help="a robot of this site (repeatable; default: every robot in --keys)")
    render.add_argument("--ca-dir", default=None, metavar="DIR",
                        help="--tls: where the fleet CA's private key lives (default KEYS/ca; "
                             "never in --out, which goes to the broker)")
    render.add_argument("--json", action="store_true", help="print a JSON summary")
    render.set_defaults(func=_render)

    run = broker.add_parser("run", help="run Mosquitto in the foreground from a rendered config")
    run.add_argument("--config", required=True, help="directory written by `broker render`")
    run.add_argument("--port", type=int, default=None,
                     help="override the configured port (0: any free port)")
    run.add_argument("--executable", default="mosquitto", help="the mosquitto binary")
    run.add_argument("--json", action="store_true", help="print a JSON summary at exit")
    run.set_defaults(func=_run)

    sync = broker.add_parser(
        "sync", help="apply keyring and rule changes to a running fleet broker, no restart")
    sync.add_argument("--config", required=True, help="fleet directory written by `render --tls`")
    sync.add_argument("--keys", required=True, help="keyring directory")
    sync.add_argument("--acl", default=None, help="rules per role (default: the packaged "
                      "broker_config/acl.json)")
    sync.add_argument("--bus", default=None, metavar="URL",
                      help="the broker (default: the configuration's listener)")
    sync.add_argument("--timeout", type=float, default=10.0, metavar="S",
                      help="how long to wait for each answer (default 10)")
    sync.add_argument("--json", action="store_true", help="print a JSON summary")
    sync.set_defaults(func=_sync)


def _render(args: argparse.Namespace) -> int:
    from vlabus.broker.render import ADMIN, DYNSEC_PLUGIN, render
    from vlabus.broker.site import render_site

    hostnames = tuple(args.hostname or ["localhost"])
    if args.site is not None:
        args.tls = True
        if args.uplink is None or args.cloud_config is None:
            print("vlabus broker render: --site needs --uplink and --cloud-config")
            return 1
    elif args.uplink or args.cloud_config or args.robot:
        print("vlabus broker render: --uplink, --cloud-config and --robot go with --site")
        return 1
    try:
        if args.site is not None:
            conf = render_site(args.keys, args.out, site=args.site, uplink=args.uplink,
                               cloud=args.cloud_config, robots=args.robot, bind=args.bind,
                               port=args.port, hostnames=hostnames, ca_dir=args.ca_dir,
                               dynsec_plugin=args.dynsec_plugin or DYNSEC_PLUGIN)
        else:
            conf = render(args.keys, args.out, tls=args.tls, bind=args.bind, port=args.port,
                          hostnames=hostnames, log_stdout=args.log_stdout,
                          config_dir=args.config_dir, ca_dir=args.ca_dir,
                          dynsec_plugin=args.dynsec_plugin or DYNSEC_PLUGIN)
    except (BusError, OSError) as exc:
        print(f"vlabus broker render: {exc}")
        return 1
    root = conf.parent
    clients = sorted(p.name.split(".")[0] for p in (root / "tls" / "clients").glob("*.crt")
                     if p.name.split(".")[0] != ADMIN) \
        if args.tls else sorted(p.stem for p in (root / "clients").glob("*.password"))
    summary: dict[str, Any] = {"config": str(conf), "mode": "fleet" if args.tls else "dev",
               "clients": clients, "files": sorted(str(p.relative_to(root))
                                                   for p in root.rglob("*") if p.is_file())}
    if args.tls:
        summary["admin"] = ADMIN
    if args.site is not None:
        from vlabus.broker.site import bridge_topics, site_identity, site_robots

        up, down = bridge_topics(site_robots(args.keys, args.robot))
        summary["site"] = {"name": args.site, "identity": site_identity(args.site),
                           "uplink": args.uplink, "up": up, "down": down,
                           "cloud_config": str(args.cloud_config)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['mode']} broker configuration in {root} for {len(clients)} clients")
        print(f"run it with: vlabus broker run --config {root}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from vlabus.broker.local import LocalMosquitto
    from vlabus.broker.render import BrokerError, listener_of

    conf = Path(args.config) / "mosquitto.conf"
    try:
        port = args.port if args.port is not None else listener_of(conf.read_text())[0]
    except (OSError, BrokerError) as exc:
        print(f"vlabus broker run: {exc}")
        return 1
    broker = LocalMosquitto(args.config, port=port, executable=args.executable)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    try:
        url = broker.start()
    except BrokerError as exc:
        print(f"vlabus broker run: {exc}")
        return 1
    # With --json, stdout carries only the final summary; the address goes to stderr.
    print(f"mosquitto running at {url} (Ctrl-C stops it)", flush=True,
          file=sys.stderr if args.json else sys.stdout)
    status, stopped = 0, False
    try:
        status = broker.wait()
    except KeyboardInterrupt:
        stopped = True
    finally:
        broker.stop()
    summary = {"url": url, "config": str(conf.resolve()), "exit_status": status,
               "stopped_by_signal": stopped, "uptime_s": round(time.monotonic() - started, 3)}
    if args.json:
        print(json.dumps(summary), flush=True)
    elif status:
        print(f"mosquitto exited with status {status}:\n{broker.log_tail()}")
    return 0 if stopped or status == 0 else 1


def _sync(args: argparse.Namespace) -> int:
    """Exit 0 when applied, 1 when the broker refused a command or a file is bad, 2 when the
    broker cannot be reached or the configuration is not a fleet one."""
    import asyncio

    from vlabus.broker.render import (
        ADMIN,
        BrokerError,
        client_options,
        is_tls,
        listener_of,
        templates_dir,
    )
    from vlabus.broker.sync import sync_access
    from vlabus.bus.transport import open_transport

    def done(code: int, **fields: Any) -> int:
        if args.json:
            print(json.dumps({"exit_code": code, **fields}))
        elif "error" in fields:
            print(f"vlabus broker sync: {fields['error']}", file=sys.stderr)
        else:
            print(" ".join(f"{k}={','.join(v) or '-'}" for k, v in fields.items()))
        return code

    config = Path(args.config)
    if not is_tls(config):
        return done(2, error=f"{config} is a dev configuration: it has no access rules to sync. "
                    "A dev broker reads its password file again on SIGHUP: run `vlabus broker "
                    "render` again, then send mosquitto SIGHUP")
    try:
        url = args.bus
        if url is None:
            text = (config / "mosquitto.conf").read_text()
            port, host = listener_of(text)
            if f"listener {port} {host}" not in text:  # bound to every address: the
                host = "localhost"  # certificate names localhost, not 127.0.0.1
            url = f"mqtts://{host}:{port}"
        options = client_options(config, ADMIN, extra={"connect_timeout_s": str(args.timeout)})
        acl = args.acl or templates_dir() / "acl.json"
    except (OSError, BrokerError) as exc:
        return done(2, error=str(exc))

    async def run() -> dict[str, list[str]]:
        try:
            admin = await open_transport(url, options)
        except (BusError, OSError) as exc:
            raise ConnectionError(f"cannot reach {url} as {ADMIN}: {exc}") from exc
        try:
            return await sync_access(admin, args.keys, acl,
                                     timeout_s=args.timeout)
        finally:
            await admin.close()

    try:
        result = asyncio.run(run())
    except ConnectionError as exc:
        return done(2, error=str(exc))
    except (BusError, OSError, ValueError) as exc:
        return done(1, error=str(exc))
    return done(0, **result)
