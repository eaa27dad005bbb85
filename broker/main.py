"""``acked-broker CONFIG [--override key=value ...]``: run one broker until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .config import BrokerConfig, ConfigError, parse_listener


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line and exit 2, as a bad config is; the usage block only on --help."""

    def error(self, message: str):
        self.exit(2, f"acked-broker: error: {message} (see acked-broker --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="acked-broker", epilog="exit statuses: 0 shut down cleanly (SIGTERM); 2 bad arguments, a bad "
                                    "config or an unusable log.dirs (one line on stderr)",
        description="A Kafka-protocol log broker (the system under test of acked). "
                    "Reads a Kafka-style properties file with Kafka's key names; "
                    "SIGTERM shuts it down cleanly. See docs/broker.md.")
    p.add_argument("config", metavar="CONFIG", help="properties file (key=value lines, Kafka key names)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set or replace one config key (repeatable)")
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("acked")
    except PackageNotFoundError:
        v = "unknown (not installed)"
    p.add_argument("--version", action="version", version=f"acked-broker {v}")
    return p


def _halt_on_log_dir_failure(directory: str, what: str, error: OSError) -> None:
    """Kafka's answer to an I/O error when the failed directory was the last live one (this broker has one):
    log the failure and halt at once, without a controlled shutdown or a clean-shutdown marker, so that the
    controller moves its partitions and the next start recovers the log (ReplicaManager.handleLogDirFailure)."""
    import os
    log = logging.getLogger("acked.broker")
    log.error("Error while %s in dir %s: %s", what, directory, error)
    log.error("Shutdown broker because all log dirs in %s have failed", directory)
    logging.shutdown()
    os._exit(1)


async def _serve(config: BrokerConfig) -> None:
    from .core import Broker
    from .server import BrokerServer

    log = logging.getLogger("acked.broker")
    listeners = config["listeners"]
    if len(listeners) > 1:
        log.warning("only the first of listeners=%s is served", ",".join(listeners))
    _name, host, port = parse_listener(listeners[0])
    loop = asyncio.get_running_loop()
    zk = store = None
    if not config.standalone:
        from .controller import ZkBroker
        from .zk_metadata import ZkMetadataStore
        zk = ZkBroker(config["zookeeper.connect"], config["broker.id"], host, port,
                      session_timeout_ms=config["zookeeper.session.timeout.ms"],
                      unclean_default=config["unclean.leader.election.enable"])
        store = ZkMetadataStore(zk)
    from .log import on_log_dir_failure
    on_log_dir_failure(_halt_on_log_dir_failure)
    broker = Broker(config, metadata_store=store)
    server = BrokerServer(broker)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        bound_host, bound_port = await server.start(host, port)
    except OSError as e:
        broker.close()
        raise SystemExit(f"acked-broker: cannot listen on {host}:{port}: {e.strerror}")
    manager = None
    if zk is not None:
        from .controller import ControllerError
        from .replica_manager import ReplicaManager
        zk.host, zk.port = broker.advertised_host, broker.advertised_port
        manager = ReplicaManager(broker, zk, loop)
        broker.replication = manager
        try:
            await loop.run_in_executor(None, manager.start)
            broker.cluster_id = await loop.run_in_executor(None, store.cluster_id)
        except ControllerError as e:
            await server.stop()
            broker.close()
            raise SystemExit(f"acked-broker: error: {e}")
    log.info("broker %d started: listening on %s:%d, advertising %s:%d, log dir %s%s",
             broker.broker_id, bound_host, bound_port, broker.advertised_host,
             broker.advertised_port, broker.log_dir,
             f", ZooKeeper {config['zookeeper.connect']}" if zk is not None else " (standalone)")
    await stop.wait()
    log.info("shutting down")
    if manager is not None:
        # Keep serving while the controller moves leaderships away, then leave ZooKeeper.
        await manager.controlled_shutdown()
    await server.stop()
    if manager is not None:
        manager.stop()
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
    for key in config.unknown:
        logging.getLogger("acked.broker").warning("unknown config key %s (ignored)", key)
    from .core import LogDirError, check_log_dir
    try:
        check_log_dir(config.log_dir)   # before ZooKeeper or a socket: an unusable directory is one line
    except LogDirError as e:
        print(f"acked-broker: error: {e}", file=sys.stderr)
        return 2
    try:
        import uvloop   # libuv's event loop: the broker spends much of its time in the loop's own machinery
    except ImportError:
        logging.getLogger("acked.broker").warning("uvloop not installed: using asyncio's default event loop")
        asyncio.run(_serve(config))
    else:
        uvloop.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
