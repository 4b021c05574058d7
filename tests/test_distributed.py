"""Training across processes and machines on a tiny random Llama: Ray (a local 2-CPU cluster, no dashboard) runs
one task per adapter and lands adapters equal to local training; failures are reported by name while the others
land; a killed worker is retried; Ctrl-C leaves the zoo as it was. accelerate/DDP: 2 CPU processes make one
adapter whose loss curve follows one process's with the same effective batch, and a kill during it resumes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks import get_task
from zoo.errors import ZooError
from zoo.store import Zoo

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(spec, **train):
    budget = {"max_examples": 16, "max_steps": 2, "batch_size": 4, "save_steps": 100, **train}
    return replace(spec, lora=replace(spec.lora, r=4, layers=None), train=replace(spec.train, **budget))


def task_file(tmp_path) -> Path:
    """A task defined in a file, with its data in a folder next to it: no registry entry anywhere."""
    data = tmp_path / "topics"
    data.mkdir()
    rows = [{"dialogue": f"#Person1#: shall we talk about item {i}? #Person2#: yes.", "topic": f"item {i % 3}"}
            for i in range(12)]
    (data / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    path = tmp_path / "topic.yaml"
    path.write_text("name: topic\ndataset: ./topics\ninput_columns: [dialogue]\noutput_column: topic\n"
                    "templates: ['What is this about?\\n\\n{dialogue}']\nmetric: rouge\n")
    return path


def tensors(zoo: Zoo, name: str) -> dict:
    return load_file(str(zoo.adapter_dir(name) / "adapter_model.safetensors"))


# Ray ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is the optional extra adapter-zoo[ray]; `make test` installs it")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a running one
    yield ray
    ray.shutdown()


def ray_train(zoo, specs, base, data_dir, on_event=None, retries=2):
    from zoo.distributed.ray_jobs import RayOptions
    from zoo.distributed.ray_train import train_on_ray

    return train_on_ray(zoo, specs, [s.name for s in specs], str(base), False, data_dir,
                        RayOptions(retries=retries), on_event=on_event)


def test_ray_tasks_give_the_adapters_local_training_gives(ray_cluster, tiny_base_dir, data_dir, tmp_path):
    """Three tasks, one from a task file, trained through Ray on 2 CPUs (two at a time) equal the same tasks
    trained here."""
    from zoo.base import load_base
    from zoo.train import train_adapter

    specs = [tiny_spec(get_task(t)) for t in ("sentiment", "qa", str(task_file(tmp_path)))]
    events = []
    landed, failed = ray_train(Zoo(tmp_path / "ray"), specs, tiny_base_dir, data_dir,
                               on_event=lambda name, e: events.append((name, e["event"], e["at"])))
    assert failed == {} and sorted(e.name for e in landed) == ["qa", "sentiment", "topic"]
    ray_zoo, local = Zoo(tmp_path / "ray"), Zoo(tmp_path / "local")
    loaded = load_base(str(tiny_base_dir), quant=False)
    for spec in specs:
        train_adapter(local, spec, loaded, data_dir=data_dir)
        a, b = tensors(ray_zoo, spec.name), tensors(local, spec.name)
        assert a.keys() == b.keys() and len(a) > 0
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
        assert ray_zoo.get(spec.name).data == local.get(spec.name).data  # same rows, same tokens
        assert ray_zoo.require_healthy(spec.name).kind == "trained"
    assert ray_zoo.get("topic").pulled_from is None and (ray_zoo.adapter_dir("topic") / "task.json").is_file()
    assert {("sentiment", "started"), ("sentiment", "step"), ("topic", "finished")} <= {e[:2] for e in events}
    spans = {name: [at for n, kind, at in events if n == name and kind in ("started", "finished")]
             for name in ("qa", "sentiment", "topic")}
    overlap = [sum(a <= start < b for a, b in spans.values()) for start, _ in spans.values()]
    assert max(overlap) <= 2, spans  # one CPU each: a progress report must not lend it to a third task
    assert not list((tmp_path / "ray" / ".staging").glob("*"))


def test_a_failing_ray_task_is_reported_while_the_other_lands(ray_cluster, tiny_base_dir, data_dir, tmp_path):
    from zoo.distributed.ray_jobs import RayOptions, run_jobs
    from zoo.distributed.ray_train import train_task

    (tmp_path / "empty").mkdir()  # a data folder without train.jsonl
    missing = replace(tiny_spec(get_task("sentiment")), name="nodata", dataset=str(tmp_path / "empty"), local_dir=None)
    zoo = Zoo(tmp_path / "zoo")
    landed, failed = ray_train(zoo, [tiny_spec(get_task("sentiment")), missing], tiny_base_dir, data_dir)
    assert [e.name for e in landed] == ["sentiment"] and list(zoo.entries()) == ["sentiment"]
    assert list(failed) == ["nodata"] and "train.jsonl" in failed["nodata"]  # its own error, by name
    # an exception other than ZooError is retried by Ray, then reported with its type
    failed = run_jobs(ray_cluster, train_task, {"broken": {"name": "broken"}}, RayOptions(retries=1),
                      land=lambda name, result: None)
    assert failed["broken"].startswith("KeyError")


@pytest.mark.reliability
def test_a_killed_ray_worker_is_retried_and_its_adapter_lands(ray_cluster, tiny_base_dir, data_dir, tmp_path):
    """A Ray worker killed (SIGKILL) in the middle of training: Ray retries the task and the adapter lands (40 steps:
    the first attempt must not finish before the kill reaches it)."""
    starts = []

    def kill_first(name, event):
        if event["event"] == "started":
            starts.append(event["pid"])
            if len(starts) == 1:
                os.kill(event["pid"], signal.SIGKILL)

    zoo = Zoo(tmp_path / "zoo")
    landed, failed = ray_train(zoo, [tiny_spec(get_task("sentiment"), max_steps=40)], tiny_base_dir, data_dir,
                               on_event=kill_first)
    assert failed == {} and [e.name for e in landed] == ["sentiment"]
    assert len(starts) == 2 and starts[0] != starts[1]  # the second attempt ran in a fresh worker
    zoo.require_healthy("sentiment")


@pytest.mark.reliability
def test_ctrl_c_during_ray_training_cancels_and_leaves_the_zoo_as_it_was(ray_cluster, tiny_base_dir, data_dir,
                                                                        tmp_path):
    """Ctrl-C while Ray tasks train: they are cancelled, the zoo is unchanged, the adapter names are free again."""
    def interrupt(name, event):
        raise KeyboardInterrupt

    zoo = Zoo(tmp_path / "zoo")
    with pytest.raises(KeyboardInterrupt):
        ray_train(zoo, [tiny_spec(get_task("sentiment"))], tiny_base_dir, data_dir, on_event=interrupt)
    assert not zoo.manifest_path.exists() and not list((tmp_path / "zoo").glob(".staging/*"))
    with zoo.name_lock("sentiment"):  # released
        pass


def test_ray_evaluation_gives_the_local_scores_and_writes_the_reports(ray_cluster, tiny_base_dir, data_dir, tmp_path):
    from tests.helpers import make_adapter
    from zoo.distributed.ray_eval import eval_on_ray
    from zoo.distributed.ray_jobs import RayOptions
    from zoo.evaluation import evaluate, summary
    from zoo.serving.runtime import Runtime

    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, tiny_base_dir, "senti", "sentiment", seed=1)
    results, failed = eval_on_ray(zoo, ["senti"], n=6, seed=0, data_dir=data_dir, batch_size=4,
                                  options=RayOptions(), quant=False)
    assert failed == {} and (zoo.reports_dir / "senti.md").is_file()
    with Runtime(zoo, quant=False) as runtime:
        local = summary(evaluate(runtime, "senti", get_task("sentiment"), n=6, data_dir=data_dir, batch_size=4))
    assert results == [local] and zoo.get("senti").metrics["eval"] == local


def test_the_shipped_ray_cluster_config_is_one_ray_up_accepts():
    """deploy/ray-cluster.yaml through the checks `ray up` runs first (Ray's own schema, defaults filled)."""
    import yaml

    pytest.importorskip("ray", reason="Ray is the optional extra adapter-zoo[ray]; `make test` installs it")
    from ray.autoscaler._private.util import prepare_config, validate_config  # what `ray up` calls

    config = prepare_config(yaml.safe_load((ROOT / "deploy" / "ray-cluster.yaml").read_text()))
    validate_config(config)
    assert config["provider"]["type"] == "local" and config["max_workers"] == len(config["provider"]["worker_ips"])


def test_without_ray_the_cli_says_how_to_get_it(monkeypatch, tiny_base_dir, data_dir, tmp_path, capsys):
    from zoo.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["train", "sentiment", "--ray", "--base", str(tiny_base_dir), "--no-quant", "--data-dir",
                 str(data_dir), "--zoo", str(tmp_path / "zoo")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'adapter-zoo[ray]'" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "sentiment", "--ray", "--processes", "2", "--data-dir", str(data_dir)]) == 2


# accelerate / DDP ---------------------------------------------------------------------------------------------
def test_n_processes_keep_the_effective_batch_of_one(monkeypatch):
    from zoo.distributed.ddp import per_process_args, without_processes

    def split(batch, accum):
        args = per_process_args({"per_device_train_batch_size": batch, "gradient_accumulation_steps": accum})
        return args["per_device_train_batch_size"], args["gradient_accumulation_steps"]

    assert split(8, 4) == (8, 4)  # one process: as given
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert split(8, 4) == (8, 2) and split(8, 1) == (4, 1)  # accumulation first, else the batch
    with pytest.raises(ZooError, match="multiple of 2"):
        split(3, 1)
    assert without_processes(["train", "qa", "--processes", "2", "--lr", "1e-3", "--processes=4"]) == \
        ["train", "qa", "--lr", "1e-3"]


def launch(args: list[str], env: dict) -> subprocess.Popen:
    """`accelerate launch` of `python -m zoo train ...` in 2 CPU processes, as docs/distributed.md shows it."""
    from zoo.distributed.ddp import launch_command

    return subprocess.Popen(launch_command(2, ["train", *args]), cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_all(launcher: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it, as a crash would (torchrun starts each worker in a
    session of its own, so killing the launcher's group alone leaves them running)."""
    import psutil

    workers = psutil.Process(launcher.pid).children(recursive=True)
    os.killpg(launcher.pid, signal.SIGKILL)
    for w in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            w.kill()
    launcher.wait()
    psutil.wait_procs(workers, timeout=30)


@pytest.mark.reliability
def test_two_processes_train_one_adapter_that_follows_one_process_and_resume_after_a_kill(tiny_base_dir, data_dir,
                                                                                         tmp_path):
    """accelerate launch, 2 CPU processes, killed after a checkpoint: --resume finishes one adapter, one manifest
    entry, and its loss curve stays within 0.05 of one process's with the same effective batch (4 x 1)."""
    from zoo.base import load_base
    from zoo.train import train_adapter

    zoo_dir = tmp_path / "zoo"
    env = {**os.environ, "ZOO_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    args = ["sentiment", "--base", str(tiny_base_dir), "--no-quant", "--zoo", str(zoo_dir), "--no-router",
            "--max-examples", "96", "--batch-size", "4", "--save-steps", "8", "--rank", "4", "--layers", "all"]
    first = launch(args, env)
    run_dir = zoo_dir / ".runs" / "sentiment"
    deadline = time.time() + 240
    while not list(run_dir.glob("checkpoint-*/trainer_state.json")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    kill_all(first)
    assert list(run_dir.glob("checkpoint-*")), first.stdout.read()[-2000:]
    assert not (zoo_dir / "zoo.json").exists()  # killed before the end: nothing installed
    second = launch([*args, "--resume"], env)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0 and "resuming from" in out, out[-3000:]
    zoo = Zoo(zoo_dir)
    assert list(zoo.entries()) == ["sentiment"] and not run_dir.exists()
    entry = zoo.require_healthy("sentiment")
    assert entry.throughput["steps"] == 24 and entry.train["batch_size"] == 4  # 96 / 4: the effective batch kept
    two = [h["loss"] for h in json.loads((zoo.adapter_dir("sentiment") / "training.json").read_text())["loss_log"]]
    spec = get_task("sentiment")
    spec = replace(spec, lora=replace(spec.lora, r=4, layers=None),
                   train=replace(spec.train, max_examples=96, batch_size=4, save_steps=8))
    one_entry = train_adapter(Zoo(tmp_path / "one"), spec, load_base(str(tiny_base_dir), quant=False),
                              data_dir=data_dir)
    one = [h["loss"] for h in json.loads((Zoo(tmp_path / "one").adapter_dir("sentiment") / "training.json")
                                         .read_text())["loss_log"]]
    assert len(one) == len(two) >= 5 and one_entry.throughput["steps"] == 24
    assert max(abs(a - b) for a, b in zip(one, two)) < 0.05, (one, two)
    assert two[-1] < two[0]  # and it learns


def test_a_data_parallel_process_leaves_its_process_group_before_exit(monkeypatch, tmp_path):
    """`zoo train` under a launch destroys the gloo process group itself: left to the interpreter's teardown, its
    worker threads can abort a finished run (exit -6, seen once in CI's suite on a loaded 2-core machine)."""
    import torch.distributed as dist

    from zoo.distributed import ddp

    monkeypatch.setenv("WORLD_SIZE", "2")  # what a launch says; the group here has this process alone
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        ddp.leave()
        assert not dist.is_initialized()
        ddp.leave()  # nothing left to leave: no error
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
