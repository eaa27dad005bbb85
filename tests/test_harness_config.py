"""Test descriptions and profiles: TOML, CLI overrides, Kafka names verbatim, clear errors."""
import json

import pytest

from harness.cli import main as acked_main
from harness.config import PROFILES, ConfigError, TestDescription, load_toml, parse_concurrency
from harness.run_cli import description_from_args
from harness.cli import build_parser


def test_safe_profile_is_the_talks_list():
    d = TestDescription(profile="safe")
    p = d.producer_config()
    assert p["acks"] == "all" and p["enable.idempotence"] == "true" and int(p["retries"]) >= 2**31 - 1
    assert d.consumer_config()["enable.auto.commit"] == "false"
    t = d.topic_config()
    assert t["min.insync.replicas"] == "2" and t["unclean.leader.election.enable"] == "false"
    assert d.broker_config()["default.replication.factor"] == "3"
    assert d.effective_delivery() == "exactly-once" and d.effective_sub_via() == "assign"


def test_each_profile_is_one_deviation_judged_by_the_safe_guarantee():
    assert set(PROFILES) == {"safe", "acks-1", "acks-0", "unclean-election", "min-isr-1", "no-idempotence", "auto-commit"}
    assert PROFILES["acks-1"].producer["acks"] == "1"
    assert PROFILES["acks-0"].producer["acks"] == "0"
    ue = PROFILES["unclean-election"]
    assert ue.topic["unclean.leader.election.enable"] == "true" and ue.topic["min.insync.replicas"] == "1"
    assert PROFILES["min-isr-1"].topic["min.insync.replicas"] == "1"
    ni = PROFILES["no-idempotence"]
    assert ni.producer["enable.idempotence"] == "false" and ni.producer["max.in.flight.requests.per.connection"] == "5"
    # a deviation is judged by what safe promises: its duplicates are findings, not allowed away
    assert all(p.delivery == "exactly-once" for p in PROFILES.values())
    ac = PROFILES["auto-commit"]
    assert ac.consumer["enable.auto.commit"] == "true" and ac.sub_via == "subscribe"
    # the real librdkafka accepts every producer and consumer setting of every profile
    from confluent_kafka import Consumer, Producer
    for p in PROFILES.values():
        Producer({"bootstrap.servers": "127.0.0.1:1", **p.producer}).flush(0)
        Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "x", **p.consumer}).close()


def test_concurrency_numbers_and_multiples_of_nodes():
    assert parse_concurrency("6", 3) == 6
    assert parse_concurrency("2n", 5) == 10
    for bad in ("0", "n", "x2", "-1", "2m"):
        with pytest.raises(ConfigError, match="concurrency"):
            parse_concurrency(bad, 3)


def test_toml_then_cli_overrides(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('name = "mine"\nprofile = "acks-1"\nnodes = 5\ntime-limit = 30\nnemesis = ["kill"]\n'
                 'concurrency = "3n"\n[producer]\n"linger.ms" = 7\n"enable.idempotence" = false\n'
                 '[topic]\n"min.insync.replicas" = 3\n')
    d = load_toml(f)
    assert (d.name, d.profile, d.nodes, d.time_limit, d.nemeses, d.concurrency_count()) == ("mine", "acks-1", 5, 30.0, ["kill"], 15)
    assert d.producer_config()["linger.ms"] == "7" and d.producer_config()["acks"] == "1"
    assert d.producer_config()["enable.idempotence"] == "false"
    assert d.topic_config()["min.insync.replicas"] == "3"
    args = build_parser().parse_args(["run", str(f), "--nodes", "3", "--producer", "acks=all",
                                      "--nemesis", "kill,partition", "--seed", "9"])
    d2 = description_from_args(args)
    assert d2.nodes == 3 and d2.producer_config()["acks"] == "all" and d2.nemeses == ["kill", "partition"]
    assert d2.seed == 9 and d2.name == "mine" and d2.producer_config()["linger.ms"] == "7"


def test_bad_descriptions_get_one_line_errors(tmp_path, capsys):
    f = tmp_path / "bad.toml"
    f.write_text('nodez = 3\n')
    with pytest.raises(ConfigError, match="unknown setting 'nodez'"):
        load_toml(f)
    with pytest.raises(ConfigError, match="unknown profile"):
        TestDescription(profile="fast").validate()
    with pytest.raises(ConfigError, match="needs at least 3 nodes"):
        TestDescription(nodes=1).validate()
    with pytest.raises(ConfigError, match="partition nemesis does not run on the local backend .* use --backend docker"):
        TestDescription(backend="local", nemeses=["partition"]).validate()
    with pytest.raises(ConfigError, match="partition: unknown choice 'sideways'; use one of one, halves"):
        TestDescription(nemeses=["partition:sideways"]).validate()
    with pytest.raises(ConfigError, match="nemesis kill is named twice"):
        TestDescription(nemeses=["kill", "kill:controller"]).validate()
    with pytest.raises(ConfigError, match="--replay .*: no nemesis.json there"):
        TestDescription(replay=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="unknown nemesis"):
        TestDescription(nemeses=["meteor"]).validate()
    status = acked_main(["run", "--nemesis", "meteor"])
    err = capsys.readouterr().err
    assert status == 4 and err.count("\n") == 1 and "unknown nemesis 'meteor'" in err
    status = acked_main(["run", "--producer", "acks"])
    assert status == 4 and "NAME=VALUE" in capsys.readouterr().err


def test_acked_nemeses_lists_every_package_from_the_registry(capsys):
    from nemesis.packages import PACKAGES
    assert acked_main(["nemeses"]) == 0
    out = capsys.readouterr().out
    for pkg in PACKAGES.values():
        assert f"{pkg.name}: " in out and pkg.claim in out
    assert acked_main(["nemeses", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["partition"]["capabilities"] == ["net"] and "leader-from-followers" in listed["partition"]["choices"]


def test_the_enabled_packages_decide_the_node_capabilities():
    assert TestDescription(nemeses=["kill", "pause"]).capabilities() == frozenset()
    assert TestDescription(nemeses=["partition:leader", "clock"]).capabilities() == {"net", "clock"}
    assert TestDescription(nemeses=["kill"], kill_target="random").packages()[0][1] == "one"


def test_acked_profiles_lists_every_profile_with_settings(capsys):
    assert acked_main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in PROFILES:
        assert f"{name}:" in out
    assert "acks=all" in out and "min.insync.replicas=2" in out and "delivery=exactly-once sub_via=subscribe" in out


def test_every_profiles_broker_settings_are_known_to_the_broker():
    from broker.config import BrokerConfig
    for name in PROFILES:
        settings = TestDescription(profile=name).broker_config()
        assert settings["zookeeper.session.timeout.ms"] == "6000"  # the harness's own default under every profile
        cfg = BrokerConfig({**settings, "broker.id": "1"})
        assert cfg.unknown == [], (name, cfg.unknown)
    acks1 = BrokerConfig(TestDescription(profile="acks-1").broker_config())
    assert acks1["replica.fetch.min.bytes"] == 1048576 and acks1["replica.fetch.wait.max.ms"] == 500
    assert BrokerConfig(TestDescription(profile="safe").broker_config())["replica.fetch.min.bytes"] == 1
    assert TestDescription(profile="acks-1", broker={"zookeeper.session.timeout.ms": "18000"}).broker_config()[
        "zookeeper.session.timeout.ms"] == "18000"
