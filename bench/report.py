"""Benchmark results -> a markdown table and a throughput-against-concurrency plot."""

from __future__ import annotations

from pathlib import Path


def markdown(results: dict) -> str:
    lines = ["| workload | model | mode | concurrency | throughput | p50 latency (s) | p95 latency (s) | vs baseline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for section in results["serving"]:
        unit = section["unit"]
        base = section["baseline"]
        lines.append(f"| {section['workload']} | {section['model']} | baseline (one request at a time) | 1 | "
                     f"{base['throughput']:.3f} {unit} | {base['p50_s']:.2f} | {base['p95_s']:.2f} | 1.00x |")
        for level in section["service"]:
            mode = f"service ({level['code']})" if "code" in level else "service"
            lines.append(f"| {section['workload']} | {section['model']} | {mode} | {level['concurrency']} | "
                         f"{level['throughput']:.3f} {unit} | {level['p50_s']:.2f} | {level['p95_s']:.2f} | "
                         f"{level['speedup']:.2f}x |")
    drifts = [f"{s['workload']} {s['baseline']['drift'] * 100:+.0f}%" for s in results["serving"]
              if "drift" in s["baseline"]]
    if drifts:
        lines += ["", "Baseline throughput after the service ran, against before (machine drift within the run): "
                  + ", ".join(drifts) + "."]
    mid = results.get("midsize")
    if mid:
        lines += ["", f"Mid-size backbone ({mid['parameters'] / 1e9:.2f} B parameters, "
                  f"context {mid['context_tokens']}): "
                  f"reference loop step (4 rows) {mid['baseline_step_s_4_rows'] * 1000:.0f} ms = "
                  f"{mid['baseline_image_tokens_per_s']:.1f} image tokens/s; engine step with 8 requests (32 rows) "
                  f"{mid['engine_step_s_32_rows'] * 1000:.0f} ms = {mid['engine_image_tokens_per_s']:.1f} image "
                  f"tokens/s: {mid['speedup_c8']:.1f}x."]
    full = results.get("fullsize")
    if full:
        lines += ["", f"Janus-Pro-1B architecture, random weights, float32 ({full['parameters'] / 1e9:.2f} B "
                  f"parameters): load {full['load_s']:.1f} s (converted cache), one-image prefill "
                  f"({full['prompt_tokens']} tokens) {full['prefill_one_image_s']:.2f} s, peak RSS "
                  f"{full['peak_rss_gib']:.1f} GiB, memory bandwidth {full['memory_bandwidth_gbs']:.1f} GB/s, "
                  f"bandwidth floor of a decode step {full['floor_step_s'] * 1000:.0f} ms "
                  f"({full['step_weight_gib']:.2f} GiB of weights).", "",
                  "| rows | decode step (ms) | step / floor |", "| --- | --- | --- |"]
        for rows, step in full["decode"].items():
            lines.append(f"| {rows} | {step['step_s'] * 1000:.0f} | {step['vs_floor']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = results["serving"]
    fig, axes = plt.subplots(1, len(sections), figsize=(5 * len(sections), 4), squeeze=False)
    for ax, section in zip(axes[0], sections, strict=True):
        for code in dict.fromkeys(s.get("code", "") for s in section["service"]):
            runs = [s for s in section["service"] if s.get("code", "") == code]
            levels = [s["concurrency"] for s in runs]
            ax.plot(levels, [s["throughput"] for s in runs], marker="o",
                    label=f"janus-serve ({code})" if code else "janus-serve")
        ax.axhline(section["baseline"]["throughput"], color="grey", linestyle="--", label="baseline (sequential)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(section["unit"])
        ax.set_title(f"{section['workload']} ({section['model']})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
