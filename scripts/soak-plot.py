#!/usr/bin/env python3
"""Plots a soak's CSV (examples/soak, scripts/soak) as one PNG: each hub's
RSS and open fds, Redis's used_memory and key count (and the abandoned
sessions' keys among them), the warm-up shaded and each series' least-squares
line after it dashed.

    scripts/soak-plot.py soak.csv soak.png [--warmup-secs S]
"""
import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fit(ts, ys):
    n = len(ts)
    if n < 3:
        return None
    mt = sum(ts) / n
    my = sum(ys) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    if sxx == 0:
        return None
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / sxx
    return slope, my - slope * mt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("png")
    ap.add_argument("--warmup-secs", type=float, default=0.0)
    a = ap.parse_args()
    with open(a.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit("soak-plot: no samples")
    cols = list(rows[0].keys())
    t = [float(r["t_secs"]) / 60 for r in rows]
    w = a.warmup_secs / 60

    def col(name, scale=1.0):
        return [float(r[name]) / scale for r in rows]

    panels = [
        ("hub RSS (MiB)", [(c[: -len("_rss_kib")], col(c, 1024)) for c in cols if c.endswith("_rss_kib")]),
        ("hub open fds", [(c[: -len("_fds")], col(c)) for c in cols if c.endswith("_fds")]),
        ("Redis used_memory (MiB)", [("used_memory", col("redis_used_memory", 1024 * 1024))]),
        ("Redis keys", [("all keys", col("redis_keys")), ("abandoned sessions' keys", col("abandoned_keys"))]),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 11), sharex=True)
    for ax, (title, series) in zip(axes, panels):
        for label, ys in series:
            (line,) = ax.plot(t, ys, label=label, linewidth=1)
            judged = [(x, y) for x, y in zip(t, ys) if x >= w]
            line_fit = fit([p[0] for p in judged], [p[1] for p in judged])
            if line_fit:
                slope, icpt = line_fit
                xs = [judged[0][0], judged[-1][0]]
                ax.plot(xs, [icpt + slope * x for x in xs], "--", color=line.get_color(), linewidth=1)
        ax.axvspan(0, w, color="grey", alpha=0.15, label="warm-up")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[-1].set_xlabel("minutes (dashed: least-squares line after warm-up)")
    fig.suptitle("mcp-hub soak: 3 hubs on Redis behind HAProxy, churn and steady broadcasts", fontsize=11)
    fig.tight_layout()
    fig.savefig(a.png, dpi=80)


if __name__ == "__main__":
    main()
