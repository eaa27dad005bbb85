"""The queue workload's generator, without a cluster: determinism, rate, key rotation, process replacement."""
import collections
import statistics

from workloads.generator import GeneratorSpec, QueueGenerator, ZipfSampler, take


def test_same_seed_same_ops_and_different_seed_different_ops():
    a = take(QueueGenerator(GeneratorSpec(seed=7, concurrency=5)), 2000)
    b = take(QueueGenerator(GeneratorSpec(seed=7, concurrency=5)), 2000)
    c = take(QueueGenerator(GeneratorSpec(seed=8, concurrency=5)), 2000)
    assert a == b
    assert a != c


def test_delays_average_to_the_rate_with_random_stagger():
    gen = QueueGenerator(GeneratorSpec(seed=1, rate=200.0))
    delays = [gen.next_delay() for _ in range(20000)]
    assert abs(statistics.mean(delays) - 1 / 200) < 0.0002
    assert min(delays) >= 0 and max(delays) <= 2 / 200
    assert statistics.pstdev(delays) > 0.001  # staggered, not a fixed period
    assert QueueGenerator(GeneratorSpec(rate=0)).next_delay() == 0.0


def test_values_are_unique_and_keys_rotate_after_their_budget():
    gen = QueueGenerator(GeneratorSpec(seed=3, concurrency=4, key_count=5, max_writes_per_key=50))
    budgets = dict(gen.budget)
    ops = take(gen, 20000)
    sends = [mop for op in ops if op["f"] == "send" for mop in op["value"]]
    values = [v for _, _, v in sends]
    assert len(values) == len(set(values))
    assert len(gen.active) == 5  # bounded active set
    assert len(gen.retired) > 50  # many keys came and went
    writes = collections.Counter(k for _, k, _ in sends)
    for key in gen.retired:
        budgets.setdefault(key, None)
    # every retired key received exactly its budget of writes, and no write after retirement
    first_budgets = {}
    g2 = QueueGenerator(GeneratorSpec(seed=3, concurrency=4, key_count=5, max_writes_per_key=50))
    first_budgets.update(g2.budget)
    for key, budget in first_budgets.items():
        assert writes[key] == budget
    assert all(writes[k] <= 50 for k in writes)
    # keys are created in order: the active keys are the newest ones
    assert all(int(k) >= int(r) for k in gen.active for r in gen.retired[:10])


def test_write_counts_per_key_are_zipf_shaped():
    import random
    z = ZipfSampler(1000, 1.0)
    rng = random.Random(0)
    samples = collections.Counter(z.sample(rng) for _ in range(50000))
    assert min(samples) >= 1 and max(samples) <= 1000
    # P(1) / P(2) is 2 for exponent 1
    assert 1.8 < samples[1] / samples[2] < 2.2
    assert samples[1] > samples[10] > samples[100]


def test_mix_has_every_kind_of_op_and_polls_need_an_assignment():
    gen = QueueGenerator(GeneratorSpec(seed=5, concurrency=3))
    ops = take(gen, 5000)
    kinds = collections.Counter(op["f"] for op in ops)
    assert set(kinds) == {"send", "poll", "assign", "crash"}
    assert kinds["send"] > kinds["poll"] > kinds["assign"] > kinds["crash"] > 0
    # a process never polls before it has assigned keys
    assigned = set()
    for op in ops:
        if op["f"] == "assign":
            assigned.add(op["process"])
            assert 1 <= len(op["value"]) <= 4
        if op["f"] == "poll":
            assert op["process"] in assigned
    sub = take(QueueGenerator(GeneratorSpec(seed=5, concurrency=3, sub_via="subscribe")), 500)
    assert "subscribe" in {op["f"] for op in sub} and "assign" not in {op["f"] for op in sub}


def test_client_crashes_come_by_time_not_by_op_count():
    """Jepsen's crash-client-interval: each client lives roughly that long, however fast ops go."""
    def crashes(seconds_per_op, interval=5.0, concurrency=4, seconds=2000):
        gen = QueueGenerator(GeneratorSpec(seed=11, concurrency=concurrency, crash_client_interval=interval))
        ops = take(gen, int(seconds / seconds_per_op), seconds_per_op)
        return sum(op["f"] == "crash" for op in ops)
    expected = 2000 * 4 / 5.0          # seconds * concurrency / interval
    slow, fast = crashes(0.05), crashes(0.002)
    assert abs(slow - expected) < 0.1 * expected and abs(fast - expected) < 0.1 * expected
    assert abs(crashes(0.01, interval=20.0) - expected / 4) < 0.1 * expected / 4
    assert crashes(0.01, interval=0) == 0
    # a stalled caller gets one crash, not the backlog of every crash that fell due meanwhile
    gen = QueueGenerator(GeneratorSpec(seed=1, concurrency=2, crash_client_interval=1.0))
    late = [gen.next_op(i % 2, 1000.0)["f"] for i in range(50)]
    assert 1 <= late.count("crash") <= 3


def test_process_replaced_after_info_and_crash_but_not_after_ok_or_fail():
    gen = QueueGenerator(GeneratorSpec(seed=2, concurrency=3))
    send = {"process": 1, "f": "send", "value": [["send", "0", 1]]}
    assert gen.next_op(1)["process"] == 1
    assert gen.complete(1, send, "ok") == 1
    assert gen.complete(1, send, "fail") == 1
    assert gen.complete(1, send, "info") == 4  # old + concurrency, as Jepsen
    assert gen.next_op(1)["process"] == 4
    assert gen.processes == [0, 4, 2]
    # the new process starts without an assignment: its first consumer op is an assign
    ops = [gen.next_op(1) for _ in range(200)]
    consumer_ops = [o for o in ops if o["f"] in ("poll", "assign")]
    assert consumer_ops[0]["f"] == "assign"
    crash = {"process": 4, "f": "crash", "value": None}
    assert gen.complete(1, crash, "info") == 7


def test_a_send_op_carries_up_to_max_sends_per_op_values_all_to_one_key():
    gen = QueueGenerator(GeneratorSpec(seed=11, concurrency=3, max_sends_per_op=4, max_writes_per_key=30))
    sends = [op["value"] for op in take(gen, 5000) if op["f"] == "send"]
    sizes = collections.Counter(len(v) for v in sends)
    assert set(sizes) <= {1, 2, 3, 4} and sizes[4] > 0 and sizes[1] > 0
    assert all(len({k for _, k, _ in v}) == 1 for v in sends)   # one key per op
    values = [x for v in sends for _, _, x in v]
    assert len(values) == len(set(values))
    # within an op, the values are consecutive and increasing: the order they are produced in
    assert all([x for _, _, x in v] == list(range(v[0][2], v[0][2] + len(v))) for v in sends)
