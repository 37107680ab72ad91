"""The ``process`` runtime and the model states, with real processes: loads walk unloaded -> loading ->
loaded, failures carry their log's tail and code, stops leave nothing behind, a running process is
adopted and never started twice, and a loaded process that dies is noticed by the watch."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis
from django.conf import settings

from anvil_site.celery import app
from serves import tasks
from serves.loading import InvalidLoadRequest, check_overrides, do_load, do_unload, watch
from serves.models import LoadError, ModelState, Serve, ServeEvent
from serves.runtimes.process import PROCESSES, ProcessRuntime, serve_dir
from tests.support.celery_worker import celery_worker
from tests.support.processes import ROOT, free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SCRIPTED = str(ROOT / "tests" / "support" / "scripted_upstream.py")


def process_serve(name: str, command: list[str], **fields: object) -> Serve:
    return Serve.objects.create(name=name, tier="fast", runtime="process", port=free_port(), served_model="scripted",
                                command=command, ready_timeout=fields.pop("ready_timeout", 30), **fields)


def group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def states(serve: Serve) -> list[str]:
    return list(ServeEvent.objects.filter(serve=serve).order_by("pk").values_list("state_after", flat=True))


def test_a_load_walks_the_states_to_loaded_and_an_unload_leaves_no_process() -> None:
    serve = process_serve("scripted-a", [sys.executable, SCRIPTED, "--port", "{port}"])
    result = do_load(serve.pk, {}, "test")
    serve.refresh_from_db()
    assert result.outcome == "ok" and serve.model_state == ModelState.LOADED
    assert states(serve) == ["loading", "loaded"]
    record = PROCESSES.record(serve)
    assert record is not None and group_alive(record.pid)
    mirrored = redis.Redis.from_url(settings.REDIS_URL).hget(f"{settings.ANVIL_REDIS_PREFIX}:model-states", serve.name)
    assert b'"state": "loaded"' in mirrored  # every web process sees it within a second
    assert do_load(serve.pk, {}, "test").outcome == "nothing"  # idempotent
    assert do_unload(serve.pk, "test").outcome == "ok"
    serve.refresh_from_db()
    assert serve.model_state == ModelState.UNLOADED and states(serve)[-2:] == ["unloading", "unloaded"]
    assert not group_alive(record.pid) and PROCESSES.record(serve) is None


def test_a_process_that_exits_while_loading_fails_with_its_log_tail() -> None:
    serve = process_serve("dies", [sys.executable, "-c", "print('cannot open /models/missing.gguf'); "
                                                          "raise SystemExit(3)"])
    result = do_load(serve.pk, {}, "test")
    serve.refresh_from_db()
    assert result.outcome == "failed" and serve.model_state == ModelState.FAILED
    assert serve.load_error == LoadError.EXITED and "cannot open /models/missing.gguf" in serve.last_error
    assert "exited with code 3" in serve.last_error


def test_an_engine_out_of_memory_is_told_apart() -> None:
    serve = process_serve("oom", [sys.executable, "-c", "print('torch.OutOfMemoryError: CUDA out of memory.'); "
                                                        "raise SystemExit(1)"])
    do_load(serve.pk, {}, "test")
    serve.refresh_from_db()
    assert serve.load_error == LoadError.OUT_OF_MEMORY


def test_a_serve_not_ready_in_time_fails_and_is_stopped() -> None:
    serve = process_serve("mute", [sys.executable, "-c", "import time; time.sleep(600)"], ready_timeout=1)
    result = do_load(serve.pk, {}, "test")
    serve.refresh_from_db()
    assert result.outcome == "failed" and serve.load_error == LoadError.READY_TIMEOUT
    assert PROCESSES.record(serve) is None  # stopped, not left to hold the GPU


def test_a_running_process_is_adopted_never_started_twice() -> None:
    serve = process_serve("once", [sys.executable, SCRIPTED, "--port", "{port}"])
    first, started = PROCESSES.start(serve, [sys.executable, SCRIPTED, "--port", str(serve.port)])
    try:
        assert started
        # A new worker process (a fresh runtime object, as after a restart) finds it and adopts it.
        again, started_again = ProcessRuntime().start(serve, [sys.executable, SCRIPTED, "--port", str(serve.port)])
        assert not started_again and again.pid == first.pid
        assert do_load(serve.pk, {}, "test").outcome == "ok"
        assert PROCESSES.record(serve).pid == first.pid
    finally:
        PROCESSES.stop(serve, timeout=5)


def test_stop_kills_the_whole_group_even_an_engine_that_ignores_sigterm() -> None:
    stubborn = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); time.sleep(600)")
    serve = process_serve("stubborn", [sys.executable, "-c", stubborn], stop_timeout=1)
    record, _ = PROCESSES.start(serve, list(serve.command))
    wait_for(lambda: len([p for p in os.listdir("/proc") if p.isdigit() and _pgid(p) == record.pid]) >= 3, 10,
             "the keeper, the engine and its child")
    started = time.monotonic()
    assert PROCESSES.stop(serve)
    assert not group_alive(record.pid) and time.monotonic() - started < 10


def _pgid(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError):
        return -1


def test_a_loaded_process_that_dies_is_failed_by_the_watch() -> None:
    serve = process_serve("fragile", [sys.executable, SCRIPTED, "--port", "{port}"])
    assert do_load(serve.pk, {}, "test").outcome == "ok"
    record = PROCESSES.record(serve)
    engine = next(p for p in os.listdir("/proc") if p.isdigit() and _pgid(p) == record.pid and int(p) != record.pid)
    os.kill(int(engine), signal.SIGKILL)
    wait_for(lambda: watch() == 1 or Serve.objects.get(pk=serve.pk).model_state == ModelState.FAILED, 10,
             "the watch to notice")
    serve.refresh_from_db()
    assert serve.model_state == ModelState.FAILED and serve.load_error == LoadError.EXITED
    assert "code -9" in serve.last_error


def test_the_engines_log_is_size_bounded() -> None:
    chatty = "import sys\nfor i in range(40000): print('x' * 300)\n"
    serve = process_serve("chatty", [sys.executable, "-c", chatty])
    from serves.runtimes import process as process_module

    record, _ = PROCESSES.start(serve, list(serve.command))
    wait_for(lambda: (serve_dir(serve.name) / "exit.json").exists(), 60, "the chatty engine to finish")
    sizes = [path.stat().st_size for path in serve_dir(serve.name).glob("output.log*")]
    assert len(sizes) == 2 and max(sizes) <= process_module.MAX_LOG_BYTES // 2 + 400  # 12 MB written, 8 MB kept
    assert record.pid > 0


def test_overrides_outside_the_load_constraints_are_refused_naming_them() -> None:
    serve = Serve(name="v", runtime="process", preset="vllm", port=1, served_model="m",
                  load_constraints={"max_model_len": {"min": 256, "max": 4096},
                                    "extra_args": {"allow": ["--enforce-eager"]}})
    assert check_overrides(serve, {"max_model_len": 2048}) == {"max_model_len": 2048}
    for bad, field in [({"max_model_len": 8192}, "max_model_len"), ({"max_model_len": "big"}, "max_model_len"),
                       ({"extra_args": ["--trust-remote-code"]}, "extra_args"), ({"dtype": "half"}, "dtype")]:
        with pytest.raises(InvalidLoadRequest) as refused:
            check_overrides(serve, bad)
        assert refused.value.field == field


def slow_start(seconds: float) -> list[str]:
    """A scripted engine that takes ``seconds`` to listen: a model loading."""
    start = (f"import runpy, sys, time; time.sleep({seconds}); sys.argv = [{SCRIPTED!r}, '--port', sys.argv[1]]; "
             f"runpy.run_path({SCRIPTED!r}, run_name='__main__')")
    return [sys.executable, "-c", start, "{port}"]


def keepers_of(serve: Serve) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(part.endswith("process_keeper.py") for part in cmdline) and serve.name in cmdline \
                and process.status() != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


@pytest.mark.slow
def test_a_worker_killed_mid_load_is_redelivered_and_never_starts_a_second_engine(logs_dir: Path) -> None:
    serve = process_serve("redeliver", slow_start(6))
    with celery_worker(logs_dir):
        sent = tasks.serve_load.apply_async((serve.pk, {}, "test"))

        def pool_running_it() -> psutil.Process | None:
            for running in (app.control.inspect(timeout=1.0).active() or {}).values():
                for task in running:
                    if task["id"] == sent.id:
                        return psutil.Process(task["worker_pid"])
            return None

        pool = wait_for(pool_running_it, 30, "a pool process to take the load")
        wait_for(lambda: keepers_of(serve), 10, "the engine to be started")
        assert Serve.objects.get(pk=serve.pk).model_state == ModelState.LOADING
        pool.send_signal(signal.SIGKILL)  # mid-load: the engine runs on, its starter is gone
        pool.wait(timeout=10)
        wait_for(lambda: Serve.objects.get(pk=serve.pk).model_state == ModelState.LOADED, 60,
                 "the redelivered load to adopt the engine and finish")
        assert len(keepers_of(serve)) == 1  # one engine, adopted, never a second
        assert app.AsyncResult(sent.id).get(timeout=30)["outcome"] == "ok"
    PROCESSES.stop(serve)
    assert not keepers_of(serve)
