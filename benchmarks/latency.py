"""End-to-end latency per task (p50/p95) through the Pipeline and through the Gradio app, and the
app's throughput with concurrent clients.

    python benchmarks/latency.py --checkpoint checkpoints/default --n 30 --out benchmarks/results/latency.json

Inputs are held-out world scenes (the `test` split), the same ones the demo offers as examples, one
different scene per request. Pipeline: `pipe(prompt, image=...)` timed around the call, in this
process, after two warm-up calls. App: `python app.py` started as its own process; each request goes
through `gradio_client` to the task's endpoint (`/detection`, ...): uploading the image, the queue,
the model, rendering the result images; the client receives the structured output and the result
images' URLs (`download_files=False`; `app_downloading` also fetches the images, as a browser does).
`gradio_floor`: a do-nothing Gradio endpoint on this machine (echo text; take one image upload), the
part of the app figures that is Gradio's own. Throughput: `--clients` threads, each with its own
client, send requests back to back for `--seconds`; once with the app batching waiting requests
together (`--max-batch 8`, the default) and once without (`--max-batch 1`).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import unitok  # noqa: F401  (before torch: sets OMP_WAIT_POLICY)
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def percentiles(times: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times)
    pick = lambda q: ms[min(len(ms) - 1, int(round(q * (len(ms) - 1))))]  # noqa: E731
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(pick(0.95), 1),
            "mean_ms": round(statistics.fmean(ms), 1)}


def requests_for(pipe, folder: Path, n: int) -> dict[str, list[dict]]:
    """Per task, ``n`` Pipeline keyword sets built from the demo's example maker (files on disk).
    Tasks whose prompts need words no world record supplies are left out."""
    import app

    out = {}
    for name, spec in pipe.tasks.items():
        rows = app.task_examples(spec, folder, n=n)
        rows = [r for r in rows if "{" not in r["prompt"].replace("{region}", "")]
        if rows:
            out[name] = [{"prompt": r["prompt"], "task": name,
                          **{k: r[k] for k in ("image", "image2", "video") if k in r},
                          **({"region": [float(v) for v in r["region"].split(",")]} if "region" in r else {})}
                         for r in rows]
    return out


def bench_pipeline(pipe, requests: dict[str, list[dict]], n: int) -> dict:
    results = {}
    for name, reqs in requests.items():
        for r in reqs[:2]:
            pipe(**r)
        times = []
        for i in range(n):
            t = time.perf_counter()
            pipe(**reqs[i % len(reqs)])
            times.append(time.perf_counter() - t)
        # Generated tokens per request (untimed): latency is mostly decoding steps.
        tokens = [len(p.tokens) for r in reqs[:5] for p in pipe.predictor.predict([pipe.example(**r)])]
        results[name] = {**percentiles(times), "tokens_mean": round(statistics.fmean(tokens), 1)}
        print(f"pipeline {name:24s} {results[name]}", flush=True)
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python app.py` in its own process, as a user would run it."""

    def __init__(self, checkpoint: str, max_batch: int, concurrency: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        cmd = [sys.executable, str(REPO / "app.py"), "--checkpoint", checkpoint, "--port", str(self.port),
               "--max-batch", str(max_batch), "--concurrency", str(concurrency)]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        import httpx

        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"app.py exited:\n{self.log.read().decode()[-3000:]}")
            try:
                if httpx.get(self.url + "config", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise TimeoutError("app.py did not start in 180 s")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def client_kwargs(request: dict) -> dict:
    from gradio_client import handle_file

    kw = {"prompt": request["prompt"]}
    for slot in ("image", "image2"):
        if slot in request:
            kw[slot] = handle_file(request[slot])
    if "video" in request:
        kw["video"] = [handle_file(f) for f in request["video"]]
    if "region" in request:
        kw["region"] = ", ".join(f"{v:g}" for v in request["region"])
    return kw


def bench_app(url: str, requests: dict[str, list[dict]], n: int, download: bool = False) -> dict:
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=download)
    results = {}
    for name, reqs in requests.items():
        for r in reqs[:2]:
            client.predict(**client_kwargs(r), api_name=f"/{name}")
        times = []
        for i in range(n):
            kw = client_kwargs(reqs[i % len(reqs)])
            t = time.perf_counter()
            client.predict(**kw, api_name=f"/{name}")
            times.append(time.perf_counter() - t)
        results[name] = percentiles(times)
        print(f"app{' (downloading)' if download else ''} {name:24s} {results[name]}", flush=True)
    return results


def bench_gradio_floor(image: str, n: int) -> dict:
    """Gradio alone, in this process: an endpoint that echoes text, and one that takes an image."""
    import gradio as gr
    from gradio_client import Client, handle_file

    with gr.Blocks(analytics_enabled=False) as demo:
        text, image_in, out = gr.Textbox(), gr.Image(type="filepath"), gr.Textbox()
        gr.Button().click(lambda x: x, text, out, api_name="echo")
        gr.Button().click(lambda x: "ok", image_in, out, api_name="image")
    demo.queue().launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False, download_files=False)
        results = {}
        for api, make in (("echo", lambda: "hello"), ("image", lambda: handle_file(image))):
            client.predict(make(), api_name=f"/{api}")
            times = []
            for _ in range(n):
                arg = make()
                t = time.perf_counter()
                client.predict(arg, api_name=f"/{api}")
                times.append(time.perf_counter() - t)
            results[api] = percentiles(times)
            print(f"gradio floor {api:18s} {results[api]}", flush=True)
        return results
    finally:
        demo.close()


def bench_throughput(url: str, requests: dict[str, list[dict]], tasks: list[str], clients: int, seconds: float) -> dict:
    """``clients`` threads send requests back to back (cycling through ``tasks``) for ``seconds``."""
    from gradio_client import Client

    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(k: int) -> None:
        client = Client(url, verbose=False, download_files=False)
        client.predict(**client_kwargs(requests[tasks[0]][0]), api_name=f"/{tasks[0]}")  # connect, warm
        start.wait()
        i = k
        while time.perf_counter() < stop_at[0]:
            name = tasks[i % len(tasks)]
            reqs = requests[name]
            kw = client_kwargs(reqs[i % len(reqs)])
            t = time.perf_counter()
            try:
                client.predict(**kw, api_name=f"/{name}")
                with lock:
                    times.append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
            i += clients

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 3600
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out = {"clients": clients, "tasks": tasks, "wall_s": round(wall, 1), "requests": len(times),
           "requests_per_s": round(len(times) / wall, 2), **percentiles(times), "errors": len(errors)}
    if errors:
        out["first_error"] = errors[0]
    print(f"throughput {out}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "default"))
    ap.add_argument("--n", type=int, default=30, help="timed requests per task and path")
    ap.add_argument("--tasks", nargs="*", help="default: every task of the checkpoint")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30, help="length of each throughput run")
    ap.add_argument("--skip-app", action="store_true", help="Pipeline figures only")
    ap.add_argument("--note", default="", help="recorded in the results, e.g. which model the checkpoint is")
    ap.add_argument("--out")
    args = ap.parse_args()

    from unitok.inference.pipeline import Pipeline

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    load_before = os.getloadavg()
    pipe = Pipeline.from_pretrained(args.checkpoint)
    folder = Path(tempfile.mkdtemp(prefix="unitok-latency-"))
    atexit.register(shutil.rmtree, folder, True)
    requests = requests_for(pipe, folder, n=min(args.n, 10))
    if args.tasks:
        requests = {k: v for k, v in requests.items() if k in args.tasks}
    report = {
        "checkpoint": str(args.checkpoint), "note": args.note,
        "model": {k: getattr(pipe.predictor.model.cfg, k) for k in ("d_model", "enc_layers", "dec_layers", "n_heads",
                                                                    "image_size")},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "pipeline": bench_pipeline(pipe, requests, args.n),
    }
    del pipe
    if not args.skip_app:
        mixed = [t for t in ("caption", "detection", "vqa", "classification") if t in requests] or list(requests)
        single = ["detection"] if "detection" in requests else mixed[:1]
        server = Server(args.checkpoint, max_batch=8, concurrency=8)
        try:
            report["app"] = bench_app(server.url, requests, args.n)
            report["app_downloading"] = bench_app(server.url, {k: v for k, v in requests.items() if k == "detection"},
                                                  args.n, download=True)
            report["throughput"] = {
                "detection": bench_throughput(server.url, requests, single, args.clients, args.seconds),
                "mixed": bench_throughput(server.url, requests, mixed, args.clients, args.seconds),
            }
        finally:
            server.close()
        server = Server(args.checkpoint, max_batch=1, concurrency=8)
        try:
            report["throughput"]["detection_unbatched"] = bench_throughput(server.url, requests, single, args.clients,
                                                                           args.seconds)
        finally:
            server.close()
        scene = next(r["image"] for reqs in requests.values() for r in reqs if "image" in r)
        report["gradio_floor"] = bench_gradio_floor(scene, args.n)
    report["load_average"] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
