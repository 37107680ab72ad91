"""The HRM engine's speed: KV-cached continuous batching against full recompute and HF ``generate``.

    .venv/bin/python bench/hrm_engine.py                      # CPU, the committed demo model
    ANVIL_DEVICE=cuda python bench/hrm_engine.py --autocast bf16   # a GPU machine

Every configuration runs in a fresh process (so its peak RSS is its own) on the same prompts
(``--prompt-tokens`` tokens each, ``--new-tokens`` generated, EOS ignored as ``vllm bench serve``
does), greedy, after one untimed warm-up:

* ``recompute``: the reference implementation's decoding, the whole context through the model
  again for every new token (batch 1, and batch 16 with the prompts side by side);
* ``hrm``: ``inference.hrm.engine.BatchEngine``: prefill, then one KV-cached step per token, with
  requests joining and leaving the batch between steps;
* ``hf``: ``inference.hrm.baseline.HFEngine``: transformers ``generate`` on a GPT-2 with the
  same width, vocabulary and per-token depth (``baseline_depth``), built here, untrained;
* ``poisson``: requests arriving as a Poisson process at 75% of the HRM batch-16 capacity
  (the same arrival times for both engines); the engine loop admits arrivals between steps,
  exactly as the worker's scheduler thread does.

Reported: output tokens/s; TTFT (arrival to first token) and TPOT (mean time per output token after
the first, per request) at p50/p99; peak RSS (and peak CUDA memory on a GPU). Needs no Django.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = ["recompute-1", "recompute-16", "hrm-1", "hrm-4", "hrm-16", "hf-1", "hf-4", "hf-16",
           "poisson-hrm", "poisson-hf"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def prompts(tokenizer: Any, count: int, length: int) -> list[list[int]]:
    """``count`` different prompts of exactly ``length`` tokens, cut from the training corpus's topics."""
    import pydoc_data.topics

    text = " ".join(sorted(pydoc_data.topics.topics.values()))
    ids = tokenizer.encode(text[:200_000]).ids
    stride = max(length, len(ids) // (count + 1))
    return [ids[i * stride:i * stride + length] for i in range(count)]


def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from inference.hrm.checkpoint import eos_id, load_checkpoint
    from inference.hrm.engine import BatchEngine, SamplingParams, Sequence

    torch.set_grad_enabled(False)
    device = args.device
    model, tokenizer = load_checkpoint(Path(args.checkpoint), device=device)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.autocast or "")
    kind, _, size = name.partition("-")
    new = args.new_tokens

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def make_engine(which: str, batch: int) -> Any:
        if which == "hf":
            from inference.hrm.baseline import HFEngine, baseline_depth, build_gpt2

            directory = Path(tempfile.mkdtemp(prefix="anvil-gpt2-"))
            build_gpt2(directory, tokenizer, d_model=model.config.d_model, layers=baseline_depth(model.config),
                       heads=model.config.n_heads, max_seq_len=model.config.max_seq_len)
            engine = HFEngine(directory, device=device, max_batch=batch)
            if autocast is not None:
                engine.model.to(autocast)
            return engine
        return BatchEngine(model, tokenizer, eos_id=eos_id(tokenizer), max_batch=batch, device=device,
                           autocast=autocast)

    def drive(engine: Any, arrivals: list[float], work: list[list[int]]) -> dict[str, Any]:
        """Submit each prompt at its arrival time (seconds from start), step until all are done."""
        firsts: dict[int, float] = {}
        lasts: dict[int, float] = {}
        sequences: list[Any] = []
        pending = list(zip(arrivals, work, strict=True))
        start = time.perf_counter()

        def on_token(sequence: Any, _text: str) -> None:
            now = time.perf_counter()
            firsts.setdefault(id(sequence), now)
            lasts[id(sequence)] = now

        while pending or not engine.idle:
            now = time.perf_counter() - start
            while pending and pending[0][0] <= now:
                arrival, prompt = pending.pop(0)
                sequence = Sequence(prompt, SamplingParams(max_tokens=new, temperature=0, ignore_eos=True),
                                    on_token=on_token)
                sequence.arrived = start + arrival  # type: ignore[attr-defined]
                sequences.append(engine.submit(sequence))
            if engine.idle:
                time.sleep(max(0.0, pending[0][0] - (time.perf_counter() - start)))
                continue
            engine.step()
            sync()
        elapsed = time.perf_counter() - start
        ttft = [firsts[id(s)] - s.arrived for s in sequences]
        tpot = [(lasts[id(s)] - firsts[id(s)]) / max(1, len(s.output) - 1) for s in sequences]
        tokens = sum(len(s.output) for s in sequences)
        assert all(len(s.output) == new for s in sequences), "every request must make exactly --new-tokens"
        return {"requests": len(sequences), "output_tokens": tokens, "seconds": elapsed,
                "tokens_per_s": tokens / elapsed, "ttft_p50_ms": 1000 * percentile(ttft, 50),
                "ttft_p99_ms": 1000 * percentile(ttft, 99), "tpot_p50_ms": 1000 * percentile(tpot, 50),
                "tpot_p99_ms": 1000 * percentile(tpot, 99)}

    result: dict[str, Any]
    if kind == "recompute":
        batch = int(size)
        work = prompts(tokenizer, batch, args.prompt_tokens)
        tokens = torch.tensor(work, device=device)

        def recompute(tokens: torch.Tensor, steps: int) -> torch.Tensor:
            context = torch.autocast("cuda", dtype=autocast) if autocast is not None else nullcontext()
            with context:
                for _ in range(steps):
                    logits, _ = model(tokens)
                    tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            return tokens

        recompute(tokens, 2)
        sync()
        start = time.perf_counter()
        recompute(tokens, new)
        sync()
        elapsed = time.perf_counter() - start
        result = {"requests": batch, "output_tokens": batch * new, "seconds": elapsed,
                  "tokens_per_s": batch * new / elapsed, "tpot_p50_ms": 1000 * elapsed / new}
    elif kind in ("hrm", "hf"):
        batch = int(size)
        engine = make_engine(kind, batch)
        drive(engine, [0.0], prompts(tokenizer, 1, args.prompt_tokens))  # warm-up
        result = drive(engine, [0.0] * batch, prompts(tokenizer, batch, args.prompt_tokens))
    else:  # poisson-<engine>
        import random

        which = size
        engine = make_engine(which, 16)
        drive(engine, [0.0], prompts(tokenizer, 1, args.prompt_tokens))
        rng = random.Random(0)
        at, arrivals = 0.0, []
        for _ in range(args.poisson_requests):
            at += rng.expovariate(args.rate)
            arrivals.append(at)
        result = drive(engine, arrivals, prompts(tokenizer, args.poisson_requests, args.prompt_tokens))
        result["rate_req_per_s"] = args.rate
    result["config"] = name
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def child(name: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--one", name, "--checkpoint", args.checkpoint, "--device", args.device,
            "--new-tokens", str(args.new_tokens), "--prompt-tokens", str(args.prompt_tokens),
            "--poisson-requests", str(args.poisson_requests), *extra]
    if args.autocast:
        argv += ["--autocast", args.autocast]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "models" / "hrm-demo"))
    parser.add_argument("--device", default=os.environ.get("ANVIL_DEVICE", "cpu"))
    parser.add_argument("--autocast", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--poisson-requests", type=int, default=48)
    parser.add_argument("--rate", type=float, default=None, help="Poisson rate (req/s); default 75%% of capacity")
    parser.add_argument("--only", default=",".join(CONFIGS))
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return

    wanted = [c for c in CONFIGS if c in args.only.split(",")]
    results: dict[str, dict[str, Any]] = {}
    for name in wanted:
        extra: list[str] = []
        if name.startswith("poisson"):
            if args.rate is None:
                capacity = results.get("hrm-16") or child("hrm-16", args, [])
                args.rate = round(0.75 * capacity["tokens_per_s"] / args.new_tokens, 3)
            extra = ["--rate", str(args.rate)]
        sys.stderr.write(f"{name} …\n")
        results[name] = child(name, args, extra)
        sys.stderr.write(f"  {results[name]['tokens_per_s']:.0f} tok/s, peak RSS "
                         f"{results[name]['peak_rss_mib']:.0f} MiB\n")
    report(results, args)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    import torch

    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device {args.device}"
    if args.device.startswith("cuda"):
        machine += f" ({torch.cuda.get_device_name()}{', autocast ' + args.autocast if args.autocast else ''})"
    lines = [f"machine: {machine}; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy", "",
             "| config | requests | tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | peak RSS MiB |"
             + (" peak CUDA MiB |" if args.device.startswith("cuda") else ""),
             "|---|---|---|---|---|---|" + ("---|" if args.device.startswith("cuda") else "")]
    for name, r in results.items():
        ttft = f"{r['ttft_p50_ms']:.1f} / {r['ttft_p99_ms']:.1f}" if "ttft_p50_ms" in r else "–"
        tpot = (f"{r['tpot_p50_ms']:.2f} / {r['tpot_p99_ms']:.2f}" if "tpot_p99_ms" in r
                else f"{r['tpot_p50_ms']:.2f}")
        label = name + (f" ({r['rate_req_per_s']} req/s)" if "rate_req_per_s" in r else "")
        row = (f"| {label} | {r['requests']} | {r['tokens_per_s']:.0f} | {ttft} | {tpot} | "
               f"{r['peak_rss_mib']:.0f} |")
        if args.device.startswith("cuda"):
            row += f" {r.get('peak_cuda_mib', 0):.0f} |"
        lines.append(row)

    def ratio(a: str, b: str) -> str:
        if a in results and b in results:
            return f"{results[a]['tokens_per_s'] / results[b]['tokens_per_s']:.1f}x"
        return "n/a"

    lines += ["", f"hrm-1 / recompute-1: {ratio('hrm-1', 'recompute-1')} (target >= 5x)",
              f"hrm-16 / recompute-16: {ratio('hrm-16', 'recompute-16')}",
              f"hrm-16 / hrm-1: {ratio('hrm-16', 'hrm-1')} (target >= 6x)",
              f"hrm-1 / hf-1: {ratio('hrm-1', 'hf-1')}; hrm-16 / hf-16: {ratio('hrm-16', 'hf-16')}; "
              f"poisson-hrm / poisson-hf: {ratio('poisson-hrm', 'poisson-hf')}"]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
