"""The history model: the flushed writer and the forgiving reader."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest

from checkers.history import HistoryError, HistoryWriter, read_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_writer_assigns_index_and_monotonic_time(tmp_path):
    path = tmp_path / "history.jsonl"
    with HistoryWriter(path) as w:
        assert w.append({"process": 0, "type": "invoke", "f": "poll", "value": [["poll"]]}) == 0
        assert w.append({"process": 0, "type": "ok", "f": "poll", "value": [["poll", {}]]}) == 1
        assert w.append({"process": 1, "type": "invoke", "f": "send", "value": [["send", "x", 1]],
                         "time": 5}) == 2
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert [e["index"] for e in lines] == [0, 1, 2]
    assert lines[0]["time"] <= lines[1]["time"] and lines[2]["time"] == 5
    assert all(isinstance(e["time"], int) for e in lines)


def test_writer_flushes_each_event(tmp_path):
    path = tmp_path / "history.jsonl"
    w = HistoryWriter(path)
    try:
        w.append({"process": 0, "type": "invoke", "f": "poll", "value": [["poll"]]})
        # Visible to another reader before close: nothing sits in a buffer.
        assert len(read_history(path).events) == 1
    finally:
        w.close()


def test_writer_is_thread_safe(tmp_path):
    path = tmp_path / "history.jsonl"
    with HistoryWriter(path) as w:
        def worker(p):
            for i in range(200):
                w.append({"process": p, "type": "invoke", "f": "send", "value": [["send", str(p), i]]})
                w.append({"process": p, "type": "ok", "f": "send", "value": [["send", str(p), [i, i]]]})
        ts = [threading.Thread(target=worker, args=(p,)) for p in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    h = read_history(path)
    assert h.problems == []
    assert sorted(e["index"] for e in h.events) == list(range(3200))
    assert len(h.invocation_of) == 1600


def test_killed_writer_loses_nothing(tmp_path):
    path = tmp_path / "history.jsonl"
    code = (
        "import sys, time\n"
        "from checkers.history import HistoryWriter\n"
        "w = HistoryWriter(sys.argv[1])\n"
        "for i in range(50):\n"
        "    w.append({'process': i, 'type': 'invoke', 'f': 'send', 'value': [['send', 'x', i]]})\n"
        "print('written', flush=True)\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"written"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    h = read_history(path)
    assert len(h.events) == 50 and h.problems == []


def test_appending_continues_numbering(tmp_path):
    path = tmp_path / "history.jsonl"
    with HistoryWriter(path) as w:
        w.append({"process": 0, "type": "invoke", "f": "poll"})
    with HistoryWriter(path) as w:
        assert w.append({"process": 0, "type": "info", "f": "poll"}) == 1


def test_truncated_last_line_is_a_problem(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"process":0,"type":"invoke","f":"send","value":[["send","x",1]]}\n'
                     b'{"process":0,"type":"ok","f":"send","value":[["send","x",[0,1]]]}\n'
                     b'{"process":1,"type":"invoke","f":"po')
    h = read_history(path)
    assert len(h.events) == 2
    assert [p.line for p in h.problems] == [3] and "truncated" in h.problems[0].message
    assert [e["index"] for e in h.events] == [0, 1]  # indexes assigned in line order
    assert h.invocation_of == {1: 0}


def test_garbled_and_invalid_lines_keep_the_rest(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(
        '{"process":0,"type":"invoke","f":"poll","value":[["poll"]]}\n'
        'this is not json\n'
        '{"process":0,"type":"maybe","f":"poll"}\n'
        '{"type":"ok","f":"poll","value":[["poll",{}]]}\n'
        '\n'
        '{"process":0,"type":"ok","f":"poll","value":[["poll",{}]]}\n')
    h = read_history(path)
    assert len(h.events) == 2
    msgs = {p.line: p.message for p in h.problems}
    assert set(msgs) == {2, 3, 4}
    assert "not valid JSON" in msgs[2] and "type must be one of" in msgs[3] and "process" in msgs[4]


def test_completion_without_invocation_is_a_problem(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"process":3,"type":"ok","f":"poll","value":[["poll",{}]]}\n')
    h = read_history(path)
    assert len(h.events) == 1 and "no invocation" in h.problems[0].message


def test_missing_file_and_non_history_raise(tmp_path):
    with pytest.raises(HistoryError, match="no such file"):
        read_history(tmp_path / "nope.jsonl")
    bad = tmp_path / "notes.txt"
    bad.write_text("hello world\nmore\n")
    with pytest.raises(HistoryError, match="not a history"):
        read_history(bad)
    obj = tmp_path / "config.json"
    obj.write_text('{"name": "x"}\n')
    with pytest.raises(HistoryError, match="not a history"):
        read_history(obj)
    with pytest.raises(HistoryError):
        read_history(tmp_path)  # a directory


def test_empty_file_is_an_empty_history(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text("")
    h = read_history(path)
    assert h.events == [] and h.problems == []


def test_edn_round_trip(tmp_path):
    from checkers import check
    from checkers.edn import write_edn
    from checkers.synth import generate
    events = generate(5, n_ops=200, threads=3, active_keys=3, rotate_every=50)
    edn = tmp_path / "history.edn"
    with open(edn, "w") as f:
        write_edn(events, f)
    text = edn.read_text()
    assert ":type :invoke" in text and ":f :send" in text and "[:send " in text
    h = read_history(edn, format="edn")
    assert h.problems == []
    assert h.events == events
    assert check(h)["valid"] is True


def test_reads_jepsen_vector_edn(tmp_path):
    path = tmp_path / "history.edn"
    path.write_text('[{:type :invoke, :f :send, :value [[:send 3 7]], :process 0, :time 1, :index 0}\n'
                    ' {:type :ok, :f :send, :value [[:send 3 [0 7]]], :process 0, :time 2, :index 1}\n'
                    ' {:type :invoke, :f :assign, :value [3], :process 1, :index 2, :seek-to-beginning? true}\n'
                    ' {:type :ok, :f :assign, :value [3], :process 1, :index 3, :seek-to-beginning? true}\n'
                    ' {:type :invoke, :f :poll, :value [[:poll]], :process 1, :time 3, :index 4}\n'
                    ' {:type :ok, :f :poll, :value [[:poll {3 [[0 7]]}]], :process 1, :time 4, :index 5}]\n')
    h = read_history(path, format="edn")
    assert h.problems == []
    assert h.events[1]["value"] == [["send", "3", [0, 7]]]
    assert h.events[3]["seek-to-beginning"] is True
    assert h.events[5]["value"] == [["poll", {"3": [[0, 7]]}]]
