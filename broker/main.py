"""``acked-broker CONFIG [--override key=value ...]``: run one broker until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .config import BrokerConfig, ConfigError, parse_listener


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="acked-broker",
        description="A Kafka-protocol log broker (the system under test of acked). "
                    "Reads a Kafka-style properties file with Kafka's key names; "
                    "SIGTERM shuts it down cleanly. See docs/broker.md.")
    p.add_argument("config", metavar="CONFIG", help="properties file (key=value lines, Kafka key names)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set or replace one config key (repeatable)")
    return p


async def _serve(config: BrokerConfig) -> None:
    from .core import Broker
    from .server import BrokerServer

    log = logging.getLogger("acked.broker")
    listeners = config["listeners"]
    if len(listeners) > 1:
        log.warning("only the first of listeners=%s is served", ",".join(listeners))
    _name, host, port = parse_listener(listeners[0])
    broker = Broker(config)
    server = BrokerServer(broker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        bound_host, bound_port = await server.start(host, port)
    except OSError as e:
        broker.close()
        raise SystemExit(f"acked-broker: cannot listen on {host}:{port}: {e.strerror}")
    log.info("broker %d started: listening on %s:%d, advertising %s:%d, log dir %s",
             broker.broker_id, bound_host, bound_port, broker.advertised_host,
             broker.advertised_port, broker.log_dir)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    broker.close()
    log.info("shut down cleanly")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = BrokerConfig.load(args.config, args.override)
    except ConfigError as e:
        print(f"acked-broker: error: {e}", file=sys.stderr)
        return 2
    if not config.standalone:
        logging.getLogger("acked.broker").warning(
            "zookeeper.connect is set, but topic metadata is still kept locally in log.dirs "
            "(the ZooKeeper-backed store is not wired in yet)")
    for key in config.unknown:
        logging.getLogger("acked.broker").warning("unknown config key %s (ignored)", key)
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
