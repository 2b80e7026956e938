"""`dualvec loadtest --stream`: searches over SearchStream calls against an in-process server. Every search sent is
answered (the generator's count, the server's count and the report agree), answers equal the idle unary answers,
an unknown word fails its own query and not its stream, the open loop keeps its schedule, a stream the server
breaks is counted apart and replaced, and bad options are named."""
from __future__ import annotations

import json
import threading
import time
from concurrent import futures

import grpc
import pytest

from dualvec.loadtest.cli import main
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc


def run_json(capsys, *argv) -> dict:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    return json.loads(captured.out)


@pytest.fixture
def counted(lee_server, monkeypatch):
    """The in-process server, counting the stream requests it answers."""
    servicer = lee_server.servicer
    inner = servicer._stream_answers
    seen = {"requests": 0}
    lock = threading.Lock()

    def counting(first, requests):
        with lock:
            seen["requests"] += len(requests)
        return inner(first, requests)

    monkeypatch.setattr(servicer, "_stream_answers", counting)
    return lee_server, seen


def test_closed_loop_streams_answer_every_search_sent_as_the_idle_unary_answers(counted, capsys):
    server, seen = counted
    s = run_json(capsys, server.address, "--stream", "--stream-window", "8", "--concurrency", "3", "--duration",
                 "1.5", "--warmup", "0.3", "--pool", "200", "--check")
    assert s["transport"] == "SearchStream" and s["mode"] == "closed" and s["concurrency"] == 3
    calls, stream = s["calls"], s["stream"]
    assert calls["sent"] > 100 and calls["ok"] == calls["sent"] and calls["failed"] == 0
    assert calls["unfinished"] == 0 and s["errors"] == {}
    assert calls["checked"] == calls["ok"] and calls["wrong_answers"] == 0
    assert stream["window"] == 8 and stream["opened"] == 3 and stream["broken"] == 0 and stream["errors"] == {}
    # the whole run, warm-up included: every search sent was answered, and the server answered exactly those
    assert stream["searches_sent"] == stream["searches_answered"] == seen["requests"]
    assert stream["searches_sent"] > calls["sent"]
    assert sum(op["count"] for op in s["per_op"].values()) == calls["ok"]
    lat = s["latency_ms"]
    assert 0 <= lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"] < 5000
    # 3 streams x 8 in flight: throughput is about 24 / latency (Little's law)
    little = 24 / (lat["mean"] / 1000.0)
    assert 0.5 * little < s["achieved_rate"] < 1.5 * little, (s["achieved_rate"], little)


def test_unknown_words_fail_their_queries_and_not_the_stream(counted, capsys, tmp_path, lee_bundle):
    from dualvec.kernel.bundle import read_bundle

    server, seen = counted
    vocab = read_bundle(lee_bundle, checksums=False).vocab.words
    words = tmp_path / "words.txt"
    words.write_text(f"{vocab[3]}\nnosuchwordxyz\n{vocab[10]}\n{vocab[40]}\n")
    s = run_json(capsys, server.address, "--stream", "--stream-window", "4", "--concurrency", "2", "--duration", "1",
                 "--warmup", "0.2", "--words", str(words), "--zipf", "0", "--mix", "in-in=1", "--pool", "400")
    calls, stream = s["calls"], s["stream"]
    assert stream["opened"] == 2 and stream["broken"] == 0 and stream["errors"] == {}
    assert stream["searches_sent"] == stream["searches_answered"] == seen["requests"]
    assert calls["unfinished"] == 0 and calls["failed"] > 0
    assert calls["ok"] + calls["failed"] == calls["sent"]
    assert s["errors"] == {"NOT_FOUND": calls["failed"]} and "nosuchwordxyz" in s["error_messages"]["NOT_FOUND"]
    assert s["per_op"]["in-in"]["errors"] == {"NOT_FOUND": calls["failed"]}
    assert 0.1 < calls["failed"] / calls["sent"] < 0.45  # one word of four, drawn uniformly


def test_open_loop_over_a_stream_keeps_its_schedule(lee_server, capsys):
    s = run_json(capsys, lee_server.address, "--stream", "--rate", "150", "--duration", "1.2", "--warmup", "0.3",
                 "--pool", "100")
    assert s["mode"] == "open" and s["offered_rate"] == 150
    assert s["calls"]["sent"] == pytest.approx(180, abs=2) and s["calls"]["failed"] == 0
    assert s["calls"]["ok"] == s["calls"]["sent"] and s["calls"]["unfinished"] == 0
    assert s["achieved_rate"] == pytest.approx(150, rel=0.15)
    assert s["stream"]["opened"] == 1 and s["stream"]["broken"] == 0  # one stream per connection
    assert s["stream"]["searches_sent"] == s["stream"]["searches_answered"] == pytest.approx(225, abs=3)


@pytest.mark.slow
def test_generator_processes_merge_their_streams(lee_server, capsys):
    s = run_json(capsys, lee_server.address, "--stream", "--concurrency", "2", "--processes", "2", "--duration", "1",
                 "--warmup", "0.3", "--pool", "60")
    assert s["processes"] == 2 and s["stream"]["opened"] == 2 and s["stream"]["broken"] == 0
    assert s["calls"]["ok"] == s["calls"]["sent"] == s["latency_ms"]["count"] > 10
    assert s["stream"]["searches_sent"] == s["stream"]["searches_answered"]


def test_text_report_tells_of_the_streams(lee_server, capsys):
    assert main([lee_server.address, "--stream", "-c", "2", "--duration", "0.5", "--warmup", "0", "--pool",
                 "40"]) == 0
    out = capsys.readouterr().out
    assert "over SearchStream, 32 in flight per stream" in out
    assert "2 streams" in out and "searches:" in out and "streams: 2 opened, 0 broken" in out


@pytest.mark.parametrize("argv, message", [
    (["--stream", "--mix", "in-in=1,batch=1"], "--stream sends Search requests only: --mix may name"),
    (["--stream", "--stream-window", "0"], "--stream-window must be >= 1, got 0"),
])
def test_bad_stream_options_are_named(argv, message, capsys):
    assert main(["127.0.0.1:1", *argv, "--connect-timeout", "0.2"]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- a breaking server

class BreakingStream(pb_grpc.DualVecServicer):
    """Answers SearchStream requests one by one and breaks each stream (UNAVAILABLE) after ``AFTER`` answers."""

    AFTER = 25

    def SearchStream(self, request_iterator, context):
        for i, _ in enumerate(request_iterator):
            if i == self.AFTER:
                context.abort(grpc.StatusCode.UNAVAILABLE, "stream broken on purpose")
            time.sleep(0.001)
            yield pb.SearchStreamResponse(index=i, response=pb.SearchResponse(
                neighbors=[pb.Neighbor(word="a", id=0, score=1.0)]))

    def GetInfo(self, request, context):
        return pb.ModelInfo(model="breaking", vocab_size=3, dim=4, spaces=[pb.IN], max_k=10, max_batch=4)


@pytest.fixture
def breaking_server():
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_DualVecServicer_to_server(BreakingStream(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop(0)


def test_a_broken_stream_is_counted_apart_its_searches_fail_and_a_new_one_goes_on(breaking_server, capsys,
                                                                                 tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("a\nb\nc\n")
    s = run_json(capsys, breaking_server, "--stream", "--stream-window", "4", "--concurrency", "2", "--duration",
                 "1", "--warmup", "0", "--words", str(words), "--mix", "in-in=1", "--pool", "10")
    calls, stream = s["calls"], s["stream"]
    assert stream["broken"] >= 4 and stream["errors"] == {"UNAVAILABLE": stream["broken"]}
    assert stream["error_messages"]["UNAVAILABLE"] == "stream broken on purpose"
    # every stream broke after 25 answers, but the last of each client, which ended with the run; each broken one
    # was replaced while the run lasted
    assert 25 * stream["broken"] <= stream["searches_answered"] < 25 * (stream["broken"] + 2)
    assert stream["opened"] in (stream["broken"], stream["broken"] + 1, stream["broken"] + 2)
    assert calls["ok"] > 0 and calls["unfinished"] == 0
    # the searches in flight on a broken stream fail with its status; none failed on its own
    assert set(s["errors"]) <= {"UNAVAILABLE"} and calls["ok"] + calls["failed"] == calls["sent"]
    assert stream["searches_sent"] == stream["searches_answered"] + calls["failed"]
