"""``koquant doctor``: the CPU, every backend's version and build, and a smoke test of each."""

from __future__ import annotations

import argparse
import json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the whole report as JSON (for bug reports)")
    p.add_argument("--no-smoke", action="store_true", help="skip the smoke tests (versions and builds only)")


def main(args: argparse.Namespace) -> int:
    from .doctor import report

    r = report(smoke=not args.no_smoke)
    failed = [n for n, b in r["backends"].items() if b.get("smoke", {}).get("passed") is False]
    if args.json:
        print(json.dumps(r, ensure_ascii=False, indent=2))
        return 1 if failed else 0
    cpu = r["cpu"]
    mem = f", {cpu['memory_bytes'] / 2**30:.1f} GiB" if cpu.get("memory_bytes") else ""
    print(f"koquant {r['koquant']} on Python {r['python']}, {r['platform']}")
    print(f"CPU: {cpu['model']} ({cpu['logical_cpus']} logical CPUs{mem})")
    print(f"     {' '.join(cpu['features']) or '(no SIMD features read)'}")
    for name, b in r["backends"].items():
        versions = ", ".join(f"{k} {v}" for k, v in b["versions"].items()) or "not installed"
        print(f"\n{name}: {versions}")
        if not b["found"]:
            print(f"  missing: {b.get('problem')}" + (f"\n  hint: {b['hint']}" if b.get("hint") else ""))
            continue
        for line in _facts(name, b):
            print(f"  {line}")
        smoke = b.get("smoke")
        if smoke is not None:
            if smoke["passed"]:
                detail = ", ".join(f"{k} {v}" for k, v in smoke.items() if k not in ("passed", "seconds"))
                print(f"  smoke test: pass ({detail}; {smoke['seconds']:.1f} s)")
            else:
                print(f"  smoke test: FAIL: {smoke['error']}" + (f"\n    hint: {smoke['hint']}" if smoke.get("hint") else ""))
    return 1 if failed else 0


def _facts(name: str, b: dict) -> list[str]:
    if name == "llama.cpp":
        c = b["cpu"]
        lines = [f"build: {c['build']}" + (f", CPU variant {c['variant']} ({c['reason']})" if c["variant"] else f" ({c['reason']})")]
        runnable = [v for v, s in c["variants"].items() if s > 0]
        if c["variants"]:
            lines.append(f"variants this CPU runs: {', '.join(runnable)}; of {len(c['variants'])} shipped")
        for v, why in c["skipped"].items():
            lines.append(f"skipped {v}: {why}")
        lines.append(f"extra buffer types (weight repacking): {'on' if c['extra_buffer_types'] else 'off'}")
        lines.append(f"system info: {b['system_info']}")
        return lines
    if name == "torch":
        return [f"CPU capability: {b['cpu_capability']}, {b['threads']} threads, oneDNN {'yes' if b['mkldnn'] else 'no'}, "
                f"CUDA {'yes' if b['cuda'] else 'no'}"]
    if name == "onnxruntime":
        if b.get("mixed_cpu_gpu_install"):
            return [f"PROBLEM: {b['problem']}"]
        return [f"providers: {', '.join(b.get('providers', []))}", "mixed CPU/GPU install: no"]
    return []
