"""Generation speed on CPU: UniTok's constrained decoder against Hugging Face T5 of the same size.

For each model config (the ``model:`` section of ``configs/<name>.yaml``) and batch size, with random
weights, a random text prompt of ``--prompt-len`` tokens and exactly ``--new-tokens`` greedy tokens:

* ``unitok no cache``     re-runs the decoder over the whole prefix at every step;
* ``unitok KV cache``     one token per step over the KV cache (eager PyTorch);
* ``unitok compiled``     the same with the per-token step under ``torch.compile`` (compiled once,
                          before timing; the compile time is reported separately);
* ``T5 generate``         ``transformers.T5ForConditionalGeneration.generate`` with the same d_model,
                          layers, heads, d_ff and vocabulary, greedy, ``min_new_tokens = max_new_tokens``.

UniTok decodes under a real task grammar (text pieces, then eos; eos masked until the budget is
reached), so its numbers include the grammar work; the grammar also means its output head computes
logits for the 465 ids a text task can emit (``Constraint.width``), where T5 computes all 1,553.
Rounds are interleaved (every mode once per round) so that load from other processes hits all
modes alike; the tables report medians, the ratios are medians of per-round ratios, and the JSON
keeps each round's ratio (``vs_t5_rounds``).

    python benchmarks/generation.py --threads 1 --out benchmarks/results/generation.json

``transformers`` is only needed here (``pip install -e .[bench]``).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import unitok  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

# isort: split
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unitok.config import load_config
from unitok.generation import Constraint, DecodingOptions, EncoderInputs, generate
from unitok.modalities.vocab import BOS, EOS, PAD
from unitok.model.config import ModelConfig
from unitok.model.transformer import UniTokModel
from unitok.recipes import build_codec
from unitok.tasks.formats import FORMATS, FormatContext
from unitok.tasks.grammar import stack_grammars
from unitok.tasks.spec import Target

MODES = ("unitok no cache", "unitok KV cache", "unitok compiled", "T5 generate")


def build(config: str):
    run = load_config(REPO / "configs" / f"{config}.yaml", {"tokenizers.text": str(REPO / "tokenizers" / "text.model")})
    codec = build_codec(run)
    cfg: ModelConfig = run.model_settings()
    cfg.vocab_size = codec.vocab.size
    cfg.expert_ranges = codec.vocab.expert_ranges(cfg.experts)
    torch.manual_seed(0)
    ours = UniTokModel(cfg).eval()
    text = FORMATS.get("text")().grammar(FormatContext(codec, Target(format="text", field="x")))
    constraint = Constraint(stack_grammars([text]))

    from transformers import T5Config, T5ForConditionalGeneration

    t5cfg = T5Config(vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=int(cfg.d_model * cfg.ffn_mult),
                     num_layers=cfg.enc_layers, num_decoder_layers=cfg.dec_layers, num_heads=cfg.n_heads,
                     pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=BOS)
    t5 = T5ForConditionalGeneration(t5cfg).eval()
    return codec, cfg, ours, constraint, t5


def run_mode(mode: str, ours, constraint, t5, prompt: torch.Tensor, n: int) -> list[list[int]]:
    b = prompt.shape[0]
    if mode == "T5 generate":
        out = t5.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, num_beams=1)
        return out[:, 1:].tolist()
    options = DecodingOptions(max_tokens=n, min_tokens=n)
    inputs = EncoderInputs(prompt, torch.ones_like(prompt, dtype=torch.bool))
    gen = generate(ours, inputs, constraint, torch.zeros(b, dtype=torch.long), options,
                   use_cache=mode != "unitok no cache", compiled=mode == "unitok compiled")
    return gen.tokens


def bench(config: str, batches: list[int], n: int, prompt_len: int, rounds: int, modes: list[str]) -> dict:
    codec, cfg, ours, constraint, t5 = build(config)
    params = {"unitok": ours.num_params(), "t5": sum(p.numel() for p in t5.parameters())}
    text_lo, text_hi = codec.vocab.range("text")
    out = {"model": {k: getattr(cfg, k) for k in ("d_model", "n_heads", "enc_layers", "dec_layers", "ffn_mult", "vocab_size")},
           "params": params, "new_tokens": n, "prompt_len": prompt_len, "batches": {}}
    for b in batches:
        g = torch.Generator().manual_seed(b)
        prompt = torch.randint(text_lo, text_hi, (b, prompt_len), generator=g)
        entry = {"compile_s": None, "same_tokens_cached_uncached_compiled": None, "modes": {}}
        with torch.inference_mode():
            outputs = {}
            for mode in modes:  # warm-up; compiles the step for this batch shape
                start = time.perf_counter()
                outputs[mode] = run_mode(mode, ours, constraint, t5, prompt, n)
                if mode == "unitok compiled":
                    entry["compile_s"] = round(time.perf_counter() - start, 1)
                assert all(len(t) == n for t in outputs[mode]), mode
            ours_out = [outputs[m] for m in modes if m.startswith("unitok")]
            entry["same_tokens_cached_uncached_compiled"] = all(o == ours_out[0] for o in ours_out)
            wall = {m: [] for m in modes}
            cpu = {m: [] for m in modes}
            for _ in range(rounds):
                for mode in modes:
                    w, c = time.perf_counter(), time.process_time()
                    run_mode(mode, ours, constraint, t5, prompt, n)
                    wall[mode].append(time.perf_counter() - w)
                    cpu[mode].append(time.process_time() - c)
        for mode in modes:
            entry["modes"][mode] = {
                "tokens_per_s": round(b * n / statistics.median(wall[mode]), 1),
                "tokens_per_cpu_s": round(b * n / statistics.median(cpu[mode]), 1),
                "ms_per_step": round(statistics.median(wall[mode]) / n * 1000, 2),
                "wall_s": [round(x, 3) for x in wall[mode]],
            }
            if "T5 generate" in modes and mode != "T5 generate":
                per_round = [t / o for t, o in zip(wall["T5 generate"], wall[mode])]
                entry["modes"][mode]["vs_t5"] = round(statistics.median(per_round), 2)
                entry["modes"][mode]["vs_t5_rounds"] = [round(r, 2) for r in per_round]
                entry["modes"][mode]["vs_t5_cpu"] = round(statistics.median(
                    t / o for t, o in zip(cpu["T5 generate"], cpu[mode])), 2)
        if "unitok no cache" in modes and "unitok KV cache" in modes:
            entry["kv_cache_speedup"] = round(statistics.median(
                u / c for u, c in zip(wall["unitok no cache"], wall["unitok KV cache"])), 2)
        out["batches"][str(b)] = entry
        print(f"{config} batch {b}: " + ", ".join(
            f"{m} {entry['modes'][m]['tokens_per_s']} tok/s" + (f" ({entry['modes'][m]['vs_t5']}x T5)" if "vs_t5" in entry["modes"][m] else "")
            for m in modes), flush=True)
    return out


def table(results: dict) -> str:
    lines = ["| config | batch | mode | tokens/s | ms/token step | vs T5 (wall) | vs T5 (CPU time) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for config, res in results["configs"].items():
        for b, entry in res["batches"].items():
            for mode, m in entry["modes"].items():
                lines.append(f"| {config} | {b} | {mode} | {m['tokens_per_s']:,.0f} | {m['ms_per_step']} | "
                             f"{m.get('vs_t5', '')}{'x' if 'vs_t5' in m else ''} | "
                             f"{m.get('vs_t5_cpu', '')}{'x' if 'vs_t5_cpu' in m else ''} |")
    return "\n".join(lines)


def profile(config: str, b: int, n: int, prompt_len: int) -> None:
    """Self time per op and per inductor kernel of one compiled greedy generation (after two warm-ups)."""
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    inductor_config.cpp.enable_kernel_profile = True  # name each generated C++ kernel in the profile
    codec, _, ours, constraint, t5 = build(config)
    prompt = torch.randint(*codec.vocab.range("text"), (b, prompt_len), generator=torch.Generator().manual_seed(b))
    with torch.inference_mode():
        for _ in range(2):
            run_mode("unitok compiled", ours, constraint, t5, prompt, n)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run_mode("unitok compiled", ours, constraint, t5, prompt, n)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=70))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[64, 32],
                    help="tokens generated per row, one value per config (the last repeats)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--compile", nargs="*", default=["tiny"],
                    help="configs whose compiled mode is measured (compiling costs ~30-60 s per batch shape)")
    ap.add_argument("--profile", metavar="CONFIG:BATCH",
                    help="instead: profile one compiled generation (torch.profiler, inductor kernels named) and print "
                         "where a step's time goes, e.g. --profile tiny:16")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    import transformers

    transformers.logging.set_verbosity_error()
    if args.profile:
        config, batch = args.profile.split(":")
        profile(config, int(batch), args.new_tokens[0], args.prompt_len)
        return
    started = time.perf_counter()
    results = {"command": " ".join(["python", "benchmarks/generation.py"] + sys.argv[1:]),
               "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                           "torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version()},
               "configs": {}}
    for i, config in enumerate(args.configs):
        n = args.new_tokens[min(i, len(args.new_tokens) - 1)]
        modes = [m for m in MODES if m != "unitok compiled" or config in args.compile]
        results["configs"][config] = bench(config, args.batches, n, args.prompt_len, args.rounds, modes)
    results["total_s"] = round(time.perf_counter() - started, 1)
    print(table(results))
    print(f"total {results['total_s']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
