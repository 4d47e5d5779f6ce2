"""Charts of the benchmark results: PNGs next to the JSON they are drawn from.

    python benchmarks/charts.py [--results benchmarks/results]

Reads gateway_throughput.json, worker_path.json and shutdown_drain.json (skipping, with a
message, any that is missing) and writes, with matplotlib's Agg backend (no display):

- throughput.png: tokens/s against concurrency, in-process and worker paths, and the ideal
  (c x 100 tokens/s: the load is 100 tokens at 10 ms per token).
- latency.png: TTFT and ITL p50/p99 against concurrency.
- memory.png: gateway peak RSS at each concurrency, and RSS per open stream.
- shutdown.png: how the streams ended on SIGTERM, and the drain timings.
- disconnect.png: disconnect -> cancel latency, in-process and through a worker.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = (8.0, 4.5)  # inches
DPI = 100
ITL_S = 0.010  # benchmarks/loadgen.py BODY: 100 tokens at 10 ms per token

IN_PROCESS = "tab:blue"
WORKER = "tab:orange"
OTHER_RUN = "tab:green"
IDEAL = "0.45"

Document = dict[str, Any]
Point = dict[str, Any]


def ideal(c: float) -> float:
    """Tokens/s if every stream ran at the engine's pace: c x 1 token / 10 ms."""
    return c / ITL_S


def load(results: Path, name: str) -> Document | None:
    path = results / f"{name}.json"
    if not path.exists():
        print(f"skipping {path}: missing (run benchmarks/{name}.py)", file=sys.stderr)
        return None
    document: Document = json.loads(path.read_text())
    return document


def new_figure(ncols: int = 1, nrows: int = 1, **subplots: Any) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False, **subplots)
    return figure, [ax for row in axes for ax in row]


def save(figure: Figure, results: Path, name: str) -> None:
    path = results / name
    figure.savefig(path)
    print(f"wrote {path}")


def subtitle(document: Document) -> str:
    env = document.get("environment", {})
    return f"Python {env.get('python', '?')}, {env.get('cpus', '?')} CPUs, {env.get('date', '?')}"


def concurrency_axis(ax: Axes, concurrencies: Sequence[int]) -> None:
    """Log-2 x axis with a tick at each measured concurrency."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(concurrencies))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("concurrent streams (c)")


def series(points: Sequence[Point], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(concurrency, value x scale) for the points that have the value."""
    xs, ys = [], []
    for point in points:
        value = point.get(key)
        if value is not None:
            xs.append(int(point["concurrency"]))
            ys.append(float(value) * scale)
    return xs, ys


def millisecond_log_axis(axis: Any, values: Sequence[float]) -> None:
    """Log scale with ticks at 1-2-5 steps that span `values`, and no minor tick labels."""
    low, high = min(values), max(values)
    ticks = [
        m * 10.0**e for e in range(-3, 5) for m in (1, 2, 5) if low / 2 <= m * 10.0**e <= high * 2
    ]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, as benchmarks/loadgen.py computes it for its tables."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# -- (1) tokens/s ------------------------------------------------------------------------


def throughput_chart(gateway: Document | None, worker: Document | None, results: Path) -> None:
    runs: list[tuple[str, Sequence[Point], str, str, str]] = []
    if worker is not None:
        runs.append(("in-process engine", worker.get("in_process", []), IN_PROCESS, "o", "-"))
        runs.append(("1 worker (WebSocket)", worker.get("worker", []), WORKER, "s", "-"))
    if gateway is not None:
        runs.append(
            ("in-process (gateway_throughput run)", gateway.get("points", []), OTHER_RUN, "^", ":")
        )
    concurrencies = [int(p["concurrency"]) for _, points, *_ in runs for p in points]
    if not concurrencies:
        print("skipping throughput.png: no points", file=sys.stderr)
        return
    figure, (rate, share) = new_figure(ncols=2, width_ratios=(3, 2))
    low, high = min(concurrencies), max(concurrencies)
    rate.plot(
        [low, high],
        [ideal(low), ideal(high)],
        color=IDEAL,
        linestyle="--",
        label="ideal: c x 100 tokens/s",
    )
    share.axhline(100, color=IDEAL, linestyle="--")
    for label, points, color, marker, style in runs:
        xs, ys = series(points, "tokens_per_s")
        rate.plot(xs, ys, color=color, marker=marker, linestyle=style, label=label)
        shares = [100 * y / ideal(x) for x, y in zip(xs, ys, strict=True)]
        share.plot(xs, shares, color=color, marker=marker, linestyle=style)
        for x, value in zip(xs, shares, strict=True):
            if x == high:
                share.annotate(
                    f"{value:.0f}%",
                    (x, value),
                    textcoords="offset points",
                    xytext=(-8, 0),
                    ha="right",
                    va="center",
                    color=color,
                    fontsize=8,
                )
    rate.set_yscale("log")
    rate.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
    rate.set_ylabel("tokens/s, all streams (log scale)")
    rate.set_title("Tokens/s", fontsize=10)
    rate.legend(fontsize=8, loc="upper left")
    share.set_ylim(0, 110)
    share.set_ylabel("share of ideal (%)")
    share.set_title("Tokens/s as % of c x 100", fontsize=10)
    for ax in (rate, share):
        concurrency_axis(ax, concurrencies)
        ax.grid(True, which="both", alpha=0.3)
    document = worker if worker is not None else gateway
    assert document is not None
    figure.suptitle(
        "Throughput against concurrency (streams of 100 tokens at 10 ms/token)\n"
        + subtitle(document),
        fontsize=10,
    )
    save(figure, results, "throughput.png")


# -- (2) TTFT and ITL --------------------------------------------------------------------


def latency_chart(gateway: Document, results: Path) -> None:
    points: list[Point] = gateway.get("points", [])
    if not points:
        print("skipping latency.png: no points in gateway_throughput.json", file=sys.stderr)
        return
    figure, (ttft, itl) = new_figure(ncols=2)
    concurrencies = [int(p["concurrency"]) for p in points]
    for ax, metric, name in ((ttft, "ttft", "TTFT"), (itl, "itl", "ITL")):
        for q, marker, style in (("p50", "o", "-"), ("p99", "s", "--")):
            xs, ys = series(points, f"{metric}_{q}_s", 1000)
            ax.plot(xs, ys, marker=marker, linestyle=style, label=f"{name} {q}")
        concurrency_axis(ax, concurrencies)
        ax.grid(True, which="both", alpha=0.3)
    engine_ttft = gateway.get("engine_ttft_p50_s")
    if engine_ttft is not None:
        ttft.axhline(
            engine_ttft * 1000,
            color=IDEAL,
            linestyle=":",
            label=f"mock engine's own TTFT p50 ({engine_ttft * 1000:.1f} ms)",
        )
    ttft.set_yscale("log")
    ttft.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ttft.set_ylabel("time to first token (ms)")
    ttft.set_title("TTFT (log scale)", fontsize=10)
    itl.axhline(ITL_S * 1000, color=IDEAL, linestyle=":", label="engine pace (10 ms)")
    itl.set_ylabel("inter-token latency, per-request mean (ms)")
    itl.set_title("ITL", fontsize=10)
    low, high = itl.get_ylim()
    itl.set_ylim(min(low, 9.0), max(high, 11.0))
    for ax in (ttft, itl):
        ax.legend(fontsize=8)
    figure.suptitle(
        "Latency under load, gateway + in-process mock engine\n" + subtitle(gateway),
        fontsize=10,
    )
    save(figure, results, "latency.png")


# -- (3) RSS -----------------------------------------------------------------------------


def memory_chart(gateway: Document, results: Path) -> None:
    points: list[Point] = gateway.get("points", [])
    memory: Document | None = gateway.get("memory")
    if not points and memory is None:
        print("skipping memory.png: no RSS data in gateway_throughput.json", file=sys.stderr)
        return
    figure, (peak, streams) = new_figure(ncols=2, width_ratios=(3, 2))
    labels = [f"c={p['concurrency']}" for p in points]
    values = [p["gateway_peak_rss_kib"] / 1024 for p in points]
    bars = peak.bar(labels, values, color=IN_PROCESS, width=0.6)
    peak.bar_label(bars, fmt="%.1f", fontsize=8)
    idle = gateway.get("idle_rss_kib")
    if idle is not None:
        peak.axhline(
            idle / 1024,
            color=IDEAL,
            linestyle=":",
            label=f"idle, fresh process ({idle / 1024:.1f} MiB)",
        )
        peak.legend(fontsize=8, loc="upper left")
    peak.set_xlabel("concurrent streams (c)")
    peak.set_ylabel("gateway peak RSS (MiB)")
    peak.set_title("Peak RSS under load", fontsize=10)
    peak.set_ylim(0, max([*values, 1.0]) * 1.15)
    if memory is not None:
        before = memory["rss_before_kib"] / 1024
        during = memory["rss_open_kib"] / 1024
        bars = streams.bar(
            ["before", f"{memory['streams']} open"],
            [before, during],
            color=[IDEAL, WORKER],
            width=0.6,
        )
        streams.bar_label(bars, fmt="%.1f", fontsize=8)
        streams.set_ylim(0, during * 1.35)
        streams.annotate(
            f"{memory['kib_per_stream']:.1f} KiB per open stream",
            xy=(0.5, 0.93),
            xycoords="axes fraction",
            ha="center",
            fontsize=9,
            fontweight="bold",
        )
        streams.set_ylabel("gateway RSS (MiB)")
        streams.set_title(f"{memory['streams']} idle open SSE streams", fontsize=10)
    else:
        streams.set_axis_off()
    figure.suptitle("Gateway memory (resident set size)\n" + subtitle(gateway), fontsize=10)
    save(figure, results, "memory.png")


# -- (4) shutdown drain ------------------------------------------------------------------


def grouped_bars(
    ax: Axes,
    groups: Sequence[str],
    columns: Sequence[tuple[str, str, Callable[[Document], float | None]]],
    cases: Sequence[Document],
    label: Callable[[float | None, Document], str],
) -> None:
    """One group of bars per case, one bar per column; missing values get an "n/a" label."""
    width = 0.8 / len(columns)
    for index, (name, color, value_of) in enumerate(columns):
        xs = [g + (index - (len(columns) - 1) / 2) * width for g in range(len(groups))]
        values = [value_of(case) for case in cases]
        bars = ax.bar(xs, [0.0 if v is None else v for v in values], width, color=color, label=name)
        ax.bar_label(
            bars,
            labels=[label(v, case) for v, case in zip(values, cases, strict=True)],
            fontsize=6,
            rotation=90,
            padding=2,
        )
    ax.set_xticks(range(len(groups)), groups, fontsize=7)


def shutdown_chart(drain: Document, results: Path) -> None:
    cases: list[Document] = drain.get("cases", [])
    if not cases:
        print("skipping shutdown.png: no cases in shutdown_drain.json", file=sys.stderr)
        return
    figure = Figure(figsize=(SIZE[0], 6.0), dpi=DPI, layout="constrained")
    outcome, timing = figure.subplots(2, 1)
    groups = [
        f"{c['streams']} x {c['length_s']:g} s\ndrain {c['drain_timeout_s']:g} s"
        f"\nexit {c['exit_after_sigterm_s']:.2f} s"
        for c in cases
    ]

    def share(key: str) -> Callable[[Document], float | None]:
        return lambda case: 100 * case[key] / case["streams"] if case["streams"] else None

    grouped_bars(
        outcome,
        groups,
        [
            ("intact", "tab:green", share("intact")),
            ("cut, with error frame", "tab:orange", share("cut_with_frame")),
            ("cut bare (no [DONE])", "tab:red", share("cut_bare")),
            ("not opened", "tab:gray", share("failed_to_open")),
        ],
        cases,
        lambda v, case: "n/a" if v is None else f"{round(v * case['streams'] / 100)}",
    )
    outcome.tick_params(labelbottom=False)  # the same groups as the timings below
    outcome.set_ylim(0, 135)
    outcome.set_ylabel("streams (% of case)")
    outcome.set_title("How each stream ended (bar labels: stream counts)", fontsize=9)
    outcome.legend(fontsize=7, ncols=4, loc="upper center")

    def seconds_to_ms(key: str) -> Callable[[Document], float | None]:
        return lambda case: None if case.get(key) is None else 1000 * case[key]

    grouped_bars(
        timing,
        groups,
        [
            ("SIGTERM -> /ready 503", "tab:blue", seconds_to_ms("ready_503_after_s")),
            ("last stream end -> exit", "tab:purple", seconds_to_ms("exit_after_last_stream_s")),
            ("last cut frame - deadline", "tab:orange", seconds_to_ms("cut_minus_deadline_max_s")),
        ],
        cases,
        lambda v, _: "n/a" if v is None else f"{v:.1f}",
    )
    timing.set_yscale("log")
    timing.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    low, high = timing.get_ylim()
    timing.set_ylim(max(low, 0.5), high * 8)
    timing.set_ylabel("ms (log scale)")
    timing.set_title("Drain timings (no orange bar: no stream was cut)", fontsize=9)
    timing.legend(fontsize=7, ncols=3, loc="upper left")
    timing.set_xlabel("case: streams x stream length, drain deadline, SIGTERM -> process exit")
    figure.suptitle("Graceful shutdown on SIGTERM\n" + subtitle(drain), fontsize=10)
    save(figure, results, "shutdown.png")


# -- (5) disconnect -> cancel ------------------------------------------------------------


def disconnect_chart(worker: Document, results: Path) -> None:
    samples: dict[str, list[float]] = worker.get("disconnect_to_cancel_s", {})
    paths = [
        (name, color, [v * 1000 for v in samples.get(key, [])])
        for key, name, color in (
            ("in_process", "in-process", IN_PROCESS),
            ("worker", "through a worker", WORKER),
        )
        if samples.get(key)
    ]
    if not paths:
        print("skipping disconnect.png: no disconnect samples in worker_path.json", file=sys.stderr)
        return
    figure, (box, cdf) = new_figure(ncols=2, width_ratios=(2, 3))
    plot = box.boxplot(
        [values for _, _, values in paths],
        tick_labels=[name for name, _, _ in paths],
        whis=(1, 99),
        sym=".",
        patch_artist=True,
        widths=0.5,
    )
    for patch, (_, color, _) in zip(plot["boxes"], paths, strict=True):
        patch.set_facecolor(color)
        patch.set_alpha(0.5)
    everything = [v for _, _, values in paths for v in values]
    box.set_yscale("log")
    millisecond_log_axis(box.yaxis, everything)
    box.set_ylabel("client close -> cancel (ms, log scale)")
    box.set_title("Box: quartiles; whiskers p1-p99", fontsize=9)
    for name, color, values in paths:
        ordered = sorted(values)
        share = [(i + 1) / len(ordered) for i in range(len(ordered))]
        cdf.step(
            ordered,
            share,
            where="post",
            color=color,
            label=(
                f"{name}, n={len(ordered)}\np50 {percentile(ordered, 50):.2f}, "
                f"p99 {percentile(ordered, 99):.2f}, max {ordered[-1]:.2f} ms"
            ),
        )
    cdf.set_xscale("log")
    millisecond_log_axis(cdf.xaxis, everything)
    cdf.set_xlabel("client close -> cancel (ms, log scale)")
    cdf.set_ylabel("share of disconnects")
    cdf.set_ylim(0, 1.4)  # headroom for the legend
    cdf.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    cdf.set_title("Cumulative distribution", fontsize=9)
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(fontsize=7, loc="upper left", ncols=2)
    figure.suptitle(
        "Client disconnect -> generation cancelled (wall-clock stamps)\n" + subtitle(worker),
        fontsize=10,
    )
    save(figure, results, "disconnect.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    results: Path = parser.parse_args().results
    gateway = load(results, "gateway_throughput")
    worker = load(results, "worker_path")
    drain = load(results, "shutdown_drain")
    if gateway is not None or worker is not None:
        throughput_chart(gateway, worker, results)
    if gateway is not None:
        latency_chart(gateway, results)
        memory_chart(gateway, results)
    if drain is not None:
        shutdown_chart(drain, results)
    if worker is not None:
        disconnect_chart(worker, results)


if __name__ == "__main__":
    main()
