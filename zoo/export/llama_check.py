"""`make llama-check`: the zoo's adapters exported to GGUF and run in llama.cpp itself, against the PEFT adapters.

llama-cpp-python publishes no wheel for this platform, so its source archive is built once into a cached wheel
(`$ZOO_CACHE/wheels/<build key>`, ~6 minutes on 2 cores; one per version, build flags and CPU instruction sets, as
it is compiled for the CPU it is built on) and installed into its own venv (`.venv-llama`): its server extras pin
their own FastAPI/Starlette, and ggml's OpenMP runtime should not share a process with torch's, so llama.cpp
runs in a worker process (`zoo.export.llama_worker`) fed the very prompt token ids the PEFT side used.

For each adapter, N validation prompts of its task (its own template): the first answer token, top-1, in
llama.cpp (embedded Q4_1 GGUF + the exported adapter) vs the PEFT adapter on the same base weights (the GGUF's,
dequantized, fp32: what the export must reproduce) and vs the project's runtime (NF4 base + PEFT adapter: what a
different quantization of the base changes), the share of identical greedy answers, the task scores, and a control
(llama.cpp without the adapter) that shows the adapter is applied at all; and llama.cpp once more on the base GGUF
expanded to f32 (no 8-bit activations), where whole answers must match. Results go to docs/llamacpp.md; the check
fails below 95% top-1 agreement with the same-weights PEFT adapter on the Q4_1 base, counting a miss where PEFT's
lead is within llama.cpp's own margin error on the base (its 95th percentile, measured on the same prompts without
the adapter) as a tie; when that bound is over 1 logit (llama.cpp would read the base unlike PEFT); or below 80%
identical greedy answers on the f32 base (`zoo.export.llama_parity`).

`start_llama_server(export_dir, port)` serves an export with llama-cpp-python's OpenAI server: one model alias per
adapter (the base GGUF + that adapter's GGUF) plus `base`, for tests of `zoo serve --upstream`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from zoo.errors import ZooError

VERSION = "0.3.36"
# no llava/mtmd (multimodal: llama_cpp imports it only for image chat handlers), no curl, tests or examples
CMAKE_ARGS = ("-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF "
              "-DLLAMA_BUILD_EXAMPLES=OFF")
# the instruction sets GGML_NATIVE compiles for: a wheel built where one is present dies (SIGILL) where it is not
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-llama"
DOCS = ROOT / "docs" / "llamacpp.md"
TARGET = 0.95
# the tie bound (llama.cpp's margin error on the base, 95th percentile) measured 0.22-0.25 logits: four times that
# says llama.cpp reads the base unlike PEFT, and a bound that wide would excuse real misses
MAX_TIE_BOUND = 1.0
# whole greedy answers on the f32-expanded base (no 8-bit activations): "the same greedy answer on most"
SAME_ANSWERS_F32 = 0.80
# 64 prompts per task: at 32 one near-tie flipped by llama.cpp's 8-bit activation rounding is 3.1 points of the bar
N_PROMPTS = 64
# adapters trained on 64 examples are unsure of their first token (near-ties); 256 is closer to what users serve
TRAIN_EXAMPLES = 256
BEGIN, END = "<!-- llama-check:begin -->", "<!-- llama-check:end -->"
CONVERTER_FILES = ("convert_lora_to_gguf.py", "conversion/", "gguf-py/")


# building and caching llama-cpp-python ----------------------------------------------------------------------------
def cache_root() -> Path:
    from zoo.base import cache_dir

    return cache_dir()


def sdist_path() -> Path:
    return cache_root() / "sdist" / f"llama_cpp_python-{VERSION}.tar.gz"


def cmake_args() -> str:
    return os.environ.get("CMAKE_ARGS", CMAKE_ARGS)


def build_key(cpuinfo: str | None = None) -> str:
    """The version, the build flags and the CPU's instruction sets (`/proc/cpuinfo`): a cached wheel (the cache may
    be shared by machines of different kinds) is reused only where it was built for the same."""
    from zoo.base import cpu_flags

    isa = sorted(cpu_flags(cpuinfo) & set(ISA_FLAGS))
    return hashlib.sha256(" ".join([VERSION, cmake_args(), *isa]).encode()).hexdigest()[:12]


def wheel_dir() -> Path:
    return cache_root() / "wheels" / build_key()


def cached_wheel() -> Path | None:
    found = sorted(wheel_dir().glob(f"llama_cpp_python-{VERSION}-*.whl"))
    return found[-1] if found else None


def _pip(python: str, *args: str, env: dict | None = None) -> None:
    done = subprocess.run([python, "-m", "pip", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise ZooError(f"pip {args[0]} failed: {done.stderr.strip()[-600:]}")


def ensure_sdist() -> Path:
    """llama-cpp-python's source archive (it vendors llama.cpp, converter included), downloaded once."""
    path = sdist_path()
    if not path.is_file():
        print(f"[llama-check] downloading llama-cpp-python {VERSION} source ...", flush=True)
        _pip(sys.executable, "download", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={VERSION}",
             "-d", str(path.parent))
    return path


def ensure_wheel() -> tuple[Path, bool]:
    """(the wheel, whether it was cached): built from source once, reused after."""
    wheel = cached_wheel()
    if wheel is not None:
        return wheel, True
    sdist = ensure_sdist()
    print(f"[llama-check] building llama-cpp-python {VERSION} (once; ~6 minutes on 2 cores) ...", flush=True)
    env = {**os.environ, "CMAKE_ARGS": cmake_args(), "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    _pip(sys.executable, "wheel", "--no-deps", str(sdist), "-w", str(wheel_dir()), env=env)
    wheel = cached_wheel()
    if wheel is None:
        raise ZooError(f"pip built no llama-cpp-python {VERSION} wheel into {wheel_dir()}")
    return wheel, False


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def venv_ready(venv: Path = VENV) -> bool:
    """The venv holds this version, built for this CPU (a checkout moved to another machine rebuilds it)."""
    python = venv_python(venv)
    if not python.is_file() or _read(venv / ".build") != build_key():
        return False
    probe = "import llama_cpp, fastapi, uvicorn; print(llama_cpp.__version__)"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == VERSION


def ensure_venv(venv: Path = VENV) -> Path:
    """`.venv-llama` with the cached wheel and its server extras; returns its python."""
    if venv_ready(venv):
        return venv_python(venv)
    wheel, _ = ensure_wheel()
    print(f"[llama-check] installing {wheel.name}[server] into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    _pip(str(venv_python(venv)), "install", "-q", f"{wheel}[server]")
    (venv / ".build").write_text(build_key())
    return venv_python(venv)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def converter_dir() -> Path | None:
    """llama.cpp's own convert_lora_to_gguf.py (with its gguf-py and conversion package), unpacked from the cached
    source archive: the reference tests/test_export_gguf.py compares the exporter with. None when not cached."""
    target = cache_root() / f"llama.cpp-{VERSION}"
    if (target / CONVERTER_FILES[0]).is_file():
        return target
    if not sdist_path().is_file():
        return None
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    staged = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".llama.cpp-"))
    with tarfile.open(sdist_path()) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                   and m.name[len(prefix):].startswith(CONVERTER_FILES)]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(staged, members=members, filter="data")
    os.replace(staged, target) if not target.exists() else None
    return target


# serving an export with llama-cpp-python's OpenAI server ----------------------------------------------------------
def server_config(export_dir: Path, port: int, n_ctx: int = 2048) -> dict:
    """llama_cpp.server's config file: `base` (the base GGUF alone) and one alias per exported adapter."""
    routes = json.loads((Path(export_dir) / "routes.json").read_text())
    base = routes["base"]["gguf"]
    if not base:
        raise ZooError(f"{export_dir}/routes.json names no base GGUF; export with --base-gguf")
    common = {"model": base, "n_ctx": n_ctx, "n_threads": os.cpu_count() or 2, "verbose": False}
    models = [{**common, "model_alias": "base"}]
    models += [{**common, "model_alias": name, "lora_path": str((Path(export_dir) / a["path"]).resolve())}
               for name, a in routes["adapters"].items()]
    return {"host": "127.0.0.1", "port": port, "models": models}


@contextmanager
def start_llama_server(export_dir, port: int, venv: Path = VENV, timeout: float = 180.0):
    """Serve `zoo export gguf`'s folder with llama-cpp-python's server (`python -m llama_cpp.server`) on
    127.0.0.1:`port`; yields the OpenAI base URL (`http://127.0.0.1:PORT/v1`; model = an adapter's name, or
    `base`). Stopped on exit."""
    python = venv_python(venv)
    if not venv_ready(venv):
        raise ZooError(f"llama-cpp-python {VERSION} is not installed in {venv}; run `make llama-check` once")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "llama_server.json"
        config.write_text(json.dumps(server_config(Path(export_dir), port)))
        log = open(Path(tmp) / "server.log", "w+")
        worker = Path(__file__).with_name("llama_worker.py")  # llama_cpp.server, without ggml's AMX buffers
        proc = subprocess.Popen([str(python), str(worker), "--serve", str(config)], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            _wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, log, timeout)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _wait_ready(url: str, proc, log, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise ZooError(f"llama_cpp.server exited ({proc.returncode}): {log.read()[-600:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise ZooError(f"llama_cpp.server did not answer {url} within {timeout:.0f} s")


# the check ------------------------------------------------------------------------------------------------------------
def small_zoo(root: Path, examples: int, data_dir=None) -> Path:
    """The zoo the check trains when given none (or `--train-zoo`): the built-in tasks briefly (`zoo train --all
    --max-examples N`) into `root`."""
    from zoo.cli import main

    print(f"[llama-check] training small adapters ({examples} examples each) in {root}", flush=True)
    # no router: the export's routes fall back to each adapter's task, and its fit costs CI a minute or more
    argv = ["train", "--all", "--max-examples", str(examples), "--no-router", "--zoo", str(root)]
    if main(argv + (["--data-dir", str(data_dir)] if data_dir else [])):
        raise ZooError("training the small adapters failed (see above)")
    return root


def run_check(zoo_dir, n: int, data_dir=None, docs: Path = DOCS, train_examples: int = TRAIN_EXAMPLES) -> int:
    """Build/reuse llama-cpp-python, export the zoo, compare; 1 when an adapter misses a bar (module docstring)."""
    from zoo.export.gguf import export_gguf
    from zoo.export.llama_parity import compare_zoo, table, write_docs
    from zoo.store import Zoo

    t0 = time.perf_counter()
    cached = cached_wheel() is not None  # a missing venv is rebuilt from the cached wheel in seconds
    python = ensure_venv()
    setup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="llama-check-") as tmp:
        zoo = Zoo(zoo_dir) if zoo_dir else None
        if zoo is None or not zoo.healthy():
            zoo = Zoo(small_zoo(Path(tmp) / "zoo", train_examples, data_dir))
        trained = time.perf_counter() - t0 - setup
        export = Path(tmp) / "gguf"
        export_gguf(zoo, zoo.healthy(), export, argparse.Namespace(outtype="f32", base_gguf=None))
        results = compare_zoo(zoo, export, python, n, data_dir)
    wall = time.perf_counter() - t0
    context = {"zoo": str(zoo_dir or f"small zoo trained here ({train_examples} examples per task)"),
               "llama-cpp-python": VERSION, "wheel": "cached" if cached else "built in this run",
               "setup s": f"{setup:.0f}", "training s": f"{trained:.0f}",
               "export and comparisons s": f"{wall - setup - trained:.0f}", "wall s": f"{wall:.0f}",
               "cpus": os.cpu_count(),
               "load average at the end": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    write_docs(docs, results, context, BEGIN, END)
    print(table(results))
    print(f"[llama-check] {wall:.0f} s in all ({setup:.0f} s setup, wheel {context['wheel']}); results in {docs}")
    low = failures(results)
    for line in low:
        print(f"[llama-check] FAIL {line}")
    return 1 if low else 0


def failures(results) -> list[str]:
    """One line per bar an adapter misses (module docstring); none: the check passes."""
    low = [f"{r.adapter}: top-1 agreement outside ties (bound {r.tie_bound:.3f}) {r.top1_outside_ties:.1%} < "
           f"{TARGET:.0%}" for r in results if not r.top1_outside_ties >= TARGET]
    low += [f"{r.adapter}: llama.cpp's margin error on the base {r.tie_bound:.3f} > {MAX_TIE_BOUND:g} logit"
            for r in results if not r.tie_bound <= MAX_TIE_BOUND]
    low += [f"{r.adapter}: same greedy answer on the f32 base {r.same_answers_f32:.1%} < {SAME_ANSWERS_F32:.0%}"
            for r in results if not r.same_answers_f32 >= SAME_ANSWERS_F32]
    return low


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.export.llama_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default=os.environ.get("LLAMA_CHECK_ZOO"),
                   help="trained zoo to check (default: $LLAMA_CHECK_ZOO; none: small adapters trained here)")
    p.add_argument("-n", type=int, default=N_PROMPTS, help=f"validation prompts per task (default {N_PROMPTS})")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $ZOO_DATA_DIR)")
    p.add_argument("--docs", type=Path, default=DOCS, help="where the results table goes")
    p.add_argument("--train-examples", type=int, default=TRAIN_EXAMPLES,
                   help=f"examples per task for the small zoo (default {TRAIN_EXAMPLES})")
    p.add_argument("--setup-only", action="store_true", help="build/reuse the wheel and venv, then stop")
    p.add_argument("--train-zoo", type=Path, metavar="DIR",
                   help="train the small zoo the check trains when given none into DIR, then stop (CI trains one "
                        "for both engine checks)")
    args = p.parse_args(argv)
    try:
        if args.setup_only:
            print(f"[llama-check] {ensure_venv()} ready")
            return 0
        if args.train_zoo:
            small_zoo(args.train_zoo, args.train_examples, args.data_dir)
            return 0
        return run_check(args.zoo, args.n, args.data_dir, args.docs, args.train_examples)
    except ZooError as e:
        print(f"[llama-check] error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
