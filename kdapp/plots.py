"""Plotly figures from plain data (log dicts, metrics.json, benchmark rows): no gradio, no torch."""
from __future__ import annotations

from collections import defaultdict

import plotly.graph_objects as go
from plotly.subplots import make_subplots

HEIGHT = 360
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
LABELS = ("negative", "positive")


def _layout(fig: go.Figure, title: str, height: int = HEIGHT, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=15)), height=height, template="plotly_white",
                      margin=dict(l=55, r=55, t=50, b=45),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1), **kw)
    return fig


def _empty(title: str, note: str, height: int = HEIGHT) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height)


def loss_curve(history: list[dict], title: str = "Training loss") -> go.Figure:
    """Train loss per logged step (and the CE / KD / hidden parts of a distillation loss), validation loss and
    accuracy (right axis). `history`: Trainer log dicts with 'step' and optionally 'stage' (one line set per stage)."""
    train = [h for h in history if "loss" in h and "step" in h]
    evals = [h for h in history if "eval_loss" in h or "eval_accuracy" in h]
    if not train and not evals:
        return _empty(title, "Waiting for the first logged step…")
    stages = list(dict.fromkeys(h.get("stage", "") for h in train + evals))
    multi = len(stages) > 1
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    parts = (("loss", "train loss", "solid"), ("loss_ce", "CE part", "dash"), ("loss_kd", "KD part", "dot"),
             ("loss_hidden", "hidden part", "dashdot"))
    for i, stage in enumerate(stages):
        color = COLORS[i % len(COLORS)]
        prefix = f"{stage}: " if multi else ""
        rows = [h for h in train if h.get("stage", "") == stage]
        for key, name, dash in parts:
            pts = [(h["step"], h[key]) for h in rows if key in h]
            if not pts or (key != "loss" and all(v == 0 for _, v in pts)):
                continue  # e.g. the KD part of a no-KD student is always 0
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=prefix + name,
                                     mode="lines+markers" if len(pts) < 40 else "lines",
                                     line=dict(color=color, dash=dash, width=2 if key == "loss" else 1.5),
                                     marker=dict(size=5)), secondary_y=False)
        ev = [h for h in evals if h.get("stage", "") == stage]
        pts = [(h["step"], h["eval_loss"]) for h in ev if "eval_loss" in h]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=prefix + "validation loss",
                                     mode="lines+markers", marker=dict(symbol="square", size=8),
                                     line=dict(color=color, width=1)), secondary_y=False)
        pts = [(h["step"], h["eval_accuracy"]) for h in ev if "eval_accuracy" in h]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=prefix + "validation accuracy",
                                     mode="lines+markers", marker=dict(symbol="diamond", size=9),
                                     line=dict(color=color, width=1, dash="longdash")), secondary_y=True)
    fig.update_xaxes(title_text="optimizer step")
    fig.update_yaxes(title_text="loss", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="accuracy", secondary_y=True, range=[0, 1], showgrid=False)
    fig = _layout(fig, title, height=HEIGHT + 20 * (len(fig.data) // 4))
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0),
                      margin=dict(b=60 + 22 * (1 + len(fig.data) // 4)))  # below the axes: many traces, no overlap
    return fig


def reliability_diagram(bins_by_model: dict[str, list[dict]] | list[dict], title: str = "Reliability diagram",
                        ece_by_model: dict[str, float] | None = None) -> go.Figure:
    """Accuracy vs confidence per bin (metrics.json's `reliability`); the diagonal is perfect calibration."""
    if isinstance(bins_by_model, list):
        bins_by_model = {"model": bins_by_model}
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(color="#999", dash="dash")))
    for i, (name, bins) in enumerate(bins_by_model.items()):
        used = [b for b in bins or [] if b.get("count")]
        if not used:
            continue
        ece = (ece_by_model or {}).get(name)
        label = f"{name} (ECE {ece:.3f})" if ece is not None else name
        fig.add_trace(go.Bar(x=[(b["lo"] + b["hi"]) / 2 for b in used], y=[b["accuracy"] for b in used],
                             width=[(b["hi"] - b["lo"]) * (0.9 / len(bins_by_model)) for b in used],
                             name=label, marker_color=COLORS[i % len(COLORS)], opacity=0.75,
                             customdata=[[b["count"], b["confidence"]] for b in used],
                             hovertemplate="confidence %{customdata[1]:.3f}<br>accuracy %{y:.3f}"
                                           "<br>%{customdata[0]} reviews<extra></extra>"))
    if len(fig.data) == 1:
        return _empty(title, "No reliability bins in this run's metrics")
    fig.update_xaxes(title_text="confidence (top-class probability)", range=[0, 1])
    fig.update_yaxes(title_text="accuracy", range=[0, 1])
    return _layout(fig, title, barmode="overlay")


def confusion_matrix(matrix: list[list[int]], labels=LABELS, title: str = "Confusion matrix") -> go.Figure:
    """Rows: true label; columns: predicted label; cell text: count and row share."""
    if not matrix:
        return _empty(title, "No confusion matrix in this run's metrics")
    totals = [max(1, sum(r)) for r in matrix]
    text = [[f"{v}<br>({v / totals[i]:.0%})" for v in row] for i, row in enumerate(matrix)]
    fig = go.Figure(go.Heatmap(z=matrix, x=[f"pred {x}" for x in labels], y=[f"true {x}" for x in labels],
                               text=text, texttemplate="%{text}", colorscale="Blues", showscale=False,
                               hovertemplate="%{y}, %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=320)


def latency_bars(rows: list[dict], title: str = "Latency and throughput") -> go.Figure:
    """Benchmark rows (model, precision, batch_size, latency_ms_median, throughput_samples_per_s) as grouped bars."""
    if not rows:
        return _empty(title, "Run a benchmark to see the chart")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("median latency per batch (ms, lower is better)",
                                                        "throughput (reviews/s, higher is better)"))
    groups = defaultdict(list)
    for r in rows:
        groups[(r.get("batch_size"), r.get("precision", "fp32"))].append(r)
    precisions = {k[1] for k in groups}
    for i, ((batch, precision), rs) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1]))):
        name = f"batch {batch}" + (f", {precision}" if len(precisions) > 1 else "")
        x = [_short(r["model"]) for r in rs]
        color = COLORS[i % len(COLORS)]
        fig.add_trace(go.Bar(x=x, y=[r.get("latency_ms_median") for r in rs], name=name, marker_color=color,
                             legendgroup=name, hovertemplate="%{x}<br>%{y:.1f} ms<extra>" + name + "</extra>"), 1, 1)
        fig.add_trace(go.Bar(x=x, y=[r.get("throughput_samples_per_s") for r in rs], name=name, marker_color=color,
                             legendgroup=name, showlegend=False,
                             hovertemplate="%{x}<br>%{y:.1f} reviews/s<extra>" + name + "</extra>"), 1, 2)
    fig.update_yaxes(type="log", row=1, col=1)
    return _layout(fig, title, height=400, barmode="group")


def _short(model: str, width: int = 28) -> str:
    name = str(model).rstrip("/").split("/")[-1] if not str(model).startswith("arch:") else str(model)
    return name if len(name) <= width else name[: width - 1] + "…"


def sweep_heatmap(rows: list[dict], value: str = "accuracy", title: str | None = None) -> go.Figure:
    """Heatmap of `value` over alpha (x) x temperature (y); rows hold alpha, temperature, accuracy, ece.

    Several rows in one cell (e.g. seeds) are averaged; for ECE lower is better, so its colours are reversed."""
    title = title or f"Validation {value} by alpha and T"
    cells = defaultdict(list)
    for r in rows:
        if r.get(value) is not None and r.get("alpha") is not None and r.get("temperature") is not None:
            cells[(float(r["alpha"]), float(r["temperature"]))].append(float(r[value]))
    if not cells:
        return _empty(title, "No sweep results yet")
    alphas = sorted({a for a, _ in cells})
    temps = sorted({t for _, t in cells})
    z = [[(sum(cells[(a, t)]) / len(cells[(a, t)])) if (a, t) in cells else None for a in alphas] for t in temps]
    text = [[f"{v:.3f}" if v is not None else "" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=[str(a) for a in alphas], y=[str(t) for t in temps], text=text,
                               texttemplate="%{text}", colorscale="Viridis", reversescale=value in ("ece", "nll"),
                               colorbar=dict(title=value),
                               hovertemplate="alpha %{x}, T %{y}: %{z:.4f}<extra></extra>"))
    fig.update_xaxes(title_text="alpha (weight on the hard-label CE)", type="category")
    fig.update_yaxes(title_text="temperature T", type="category")
    return _layout(fig, title)
