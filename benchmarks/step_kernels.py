"""The measurements behind the batch-16 decoding-step changes (quoted in ``benchmarks/README.md`` and in
the docstrings of ``mask_logits``, ``gelu_tanh`` and ``UniTokModel.compiled``), in one run:

* ``mask``: the grammar mask, argmax and log-prob over (16, V) logits under ``torch.compile``, with the
  rules written as bool masks (an ``arange == eos`` column and two ``any`` reductions over the
  vocabulary, as before) against ``mask_logits`` (per-state minima, one int32 compare). Both give the
  same masked logits, checked here.
* ``gelu``: ATen's tanh-GELU against ``gelu_tanh``: compiled on a batch-16 step's (16, 768) activation,
  and eager under inference mode on an encoder layer's (512, 768).
* ``compile_options``: the tiny config's batch-16 compiled greedy generation with plain inductor settings
  and with ``STEP_COMPILE_OPTIONS`` (C++ wrapper), against T5 generate, as ``generation.py`` measures
  them, each variant in a worker process of its own, in interleaved rounds; ratios are medians of
  per-round ratios.

Compiled kernels are timed by the profiler (the generated C++ kernel's own time, without the call's
wrapper); eager ops by wall time.

    python benchmarks/step_kernels.py --threads 1 --out benchmarks/results/step_kernels.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import unitok  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

# isort: split
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import generation as G  # this directory's generation benchmark: model builders and modes

from unitok.generation.constraints import mask_logits
from unitok.modalities.vocab import EOS
from unitok.model import transformer
from unitok.model.layers import gelu_tanh


def kernel_us(fn, *args, calls: int = 300) -> float:
    """Mean time per call of the C++ kernels ``torch.compile(fn)`` generates (profiler self time)."""
    import torch._inductor.config as inductor_config
    from torch.profiler import profile

    inductor_config.cpp.enable_kernel_profile = True
    compiled = torch.compile(fn)
    with torch.inference_mode():
        for _ in range(5):
            compiled(*args)
        with profile() as prof:
            for _ in range(calls):
                compiled(*args)
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("graph_")) / calls


def wall_us(fn, *args, calls: int = 100) -> float:
    with torch.inference_mode():
        for _ in range(5):
            fn(*args)
        start = time.perf_counter()
        for _ in range(calls):
            fn(*args)
    return (time.perf_counter() - start) / calls * 1e6


def bool_mask(logits, need, states, left, eos_blocked):
    """The mask as it was: the eos rules as reductions over the vocabulary, bool masks throughout."""
    ok = need[states] <= left.clamp(min=1)[:, None]
    is_eos = torch.arange(ok.shape[1]) == EOS
    other = (ok & ~is_eos).any(1)
    ok = ok & ~(is_eos & (eos_blocked & other)[:, None])
    ok = ok | (is_eos & ~ok.any(1, keepdim=True))
    return logits.masked_fill(~ok, float("-inf"))


def choose(masked):
    tokens = masked.argmax(-1)
    return tokens, torch.log_softmax(masked, -1).gather(1, tokens[:, None])[:, 0]


def mask_case(batch: int) -> dict:
    constraint = G.build("tiny")[3]  # the text grammar over the tiny config's vocabulary
    g = torch.Generator().manual_seed(0)
    n_states, vocab = constraint.need.shape
    logits = torch.randn(batch, vocab, generator=g)
    states = torch.randint(0, n_states, (batch,), generator=g)
    left = torch.randint(0, 40, (batch,), generator=g)
    blocked = torch.rand(batch, generator=g) < 0.5
    before = lambda lg, st, lf, eb: choose(bool_mask(lg, constraint.need, st, lf, eb))
    after = lambda lg, st, lf, eb: choose(mask_logits(lg, constraint.tables, st, lf, eb))
    args = (logits, states, left, blocked)
    assert torch.equal(bool_mask(logits, constraint.need, *args[1:]), mask_logits(logits, constraint.tables, *args[1:]))
    b, a = kernel_us(before, *args), kernel_us(after, *args)
    return {"shape": [batch, vocab], "bool_masks_us": round(b, 1), "mask_logits_us": round(a, 1),
            "speedup": round(b / a, 2)}


def gelu_case() -> dict:
    aten = lambda x: F.gelu(x, approximate="tanh")
    step = torch.randn(16, 768)
    enc = torch.randn(512, 768)
    assert (aten(enc) - gelu_tanh(enc)).abs().max() < 1e-6
    c_before, c_after = kernel_us(aten, step), kernel_us(gelu_tanh, step)
    e_before, e_after = wall_us(aten, enc), wall_us(gelu_tanh, enc)
    return {"compiled_16x768": {"aten_us": round(c_before, 1), "gelu_tanh_us": round(c_after, 1),
                                "speedup": round(c_before / c_after, 2)},
            "eager_inference_512x768": {"aten_us": round(e_before), "gelu_tanh_us": round(e_after),
                                        "speedup": round(e_before / e_after, 2)}}


def _generation(options: dict, new_tokens: int = 64):
    """A function that runs the tiny config's batch-16 compiled greedy generation, compiled with
    ``options`` (warmed up), or T5 generate for ``options=None``, and returns its wall time."""
    if options is not None:
        transformer.STEP_COMPILE_OPTIONS = options  # read by UniTokModel.compiled when it compiles
    codec, _, ours, constraint, t5 = G.build("tiny")
    prompt = torch.randint(*codec.vocab.range("text"), (16, 32), generator=torch.Generator().manual_seed(16))

    def run() -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            G.run_mode("unitok compiled" if options is not None else "T5 generate", ours, constraint, t5, prompt,
                       new_tokens)
            return time.perf_counter() - start

    run(), run()
    return run


def worker(options: str) -> None:
    """``--worker OPTIONS``: one generation per line read from stdin, its wall time printed. Each set of
    compile options gets a process of its own: dynamo caches compiled code per function, and the
    step's guard-skipping (``skip_guard_eval_unsafe``) would not tell two variants in one process apart."""
    run = _generation(json.loads(options))
    print("ready", flush=True)
    for _ in sys.stdin:
        print(run(), flush=True)


def compile_options_case(rounds: int, threads: int, new_tokens: int = 64) -> dict:
    import subprocess

    variants = {"plain inductor": {}, "STEP_COMPILE_OPTIONS": dict(transformer.STEP_COMPILE_OPTIONS)}
    procs = {name: subprocess.Popen([sys.executable, __file__, "--threads", str(threads), "--worker", json.dumps(o)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for name, o in variants.items()}
    for proc in procs.values():
        while proc.stdout.readline().strip() != "ready":
            pass
    t5 = _generation(None, new_tokens)  # T5 in this process: it has no compiled step
    times = {name: [] for name in [*variants, "T5 generate"]}
    for _ in range(rounds):  # one process runs at a time, so rounds interleave on the same core
        for name, proc in procs.items():
            proc.stdin.write("run\n")
            proc.stdin.flush()
            times[name].append(float(proc.stdout.readline()))
        times["T5 generate"].append(t5())
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    out = {}
    for name, wall in times.items():
        entry = {"ms_per_step": round(statistics.median(wall) / new_tokens * 1e3, 2)}
        if name in variants:
            entry["vs_t5"] = round(statistics.median(t / w for t, w in zip(times["T5 generate"], wall)), 2)
        out[name] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args.worker)
    import transformers

    transformers.logging.set_verbosity_error()
    results = {"command": " ".join(["python", "benchmarks/step_kernels.py"] + sys.argv[1:]),
               "threads": args.threads, "torch": torch.__version__,
               "mask": mask_case(16), "gelu": gelu_case(), "compile_options": compile_options_case(args.rounds, args.threads)}
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
