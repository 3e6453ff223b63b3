"""Tab "Results": every run under the checkpoints folder as the seed's table (teacher vs KD vs no-KD student, Deltas
against the teacher), a picked run's reliability diagram and confusion matrix, and reviews where two models disagree."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from .. import plots
from ..checkpoints import RunInfo
from ..data import load_splits
from ..inference import predict_logits
from ..metrics import softmax
from .common import KIND_NAMES, AppContext, Refresher, guarded

EMPTY_HINT = ("**No runs under `{root}/` yet.** Train a teacher in *Train teacher* (press *Quick CPU run*, then "
              "*Start*), then distil it in *Distill student*: every finished run shows up here.")
COLUMNS = ["run", "role", "model", "alpha / T", "accuracy", "F1 (w)", "ECE", "params", "size MB", "reviews/s",
           "Δ acc (pp)", "Δ F1 (pp)", "Δ ECE", "Δ params", "Δ size"]


def teacher_of(run: RunInfo, runs: list[RunInfo]) -> RunInfo | None:
    """The teacher run a student was distilled from, if it is among `runs`."""
    name = run.run_config.get("teacher")
    if run.kind == "teacher" or not name:
        return None
    target = Path(name).resolve()
    return next((r for r in runs if r.kind == "teacher" and (r.path.resolve() == target or r.name == target.name)),
                None)


def ordered_runs(runs: list[RunInfo]) -> list[tuple[RunInfo, RunInfo | None]]:
    """(run, its teacher) with each teacher followed by its KD and no-KD students; the rest at the end."""
    out, seen = [], set()
    order = {"kd": 0, "nokd": 1}
    for t in [r for r in runs if r.kind == "teacher"]:
        out.append((t, None))
        seen.add(t.path)
        students = sorted((r for r in runs if r.kind != "teacher" and teacher_of(r, runs) is t),
                          key=lambda r: (order.get(r.kind, 2), -r.path.stat().st_mtime))
        for s in students:
            out.append((s, t))
            seen.add(s.path)
    out += [(r, None) for r in runs if r.path not in seen]
    return out


def results_table(runs: list[RunInfo]) -> pd.DataFrame:
    rows = []
    for run, teacher in ordered_runs(runs):
        v = run.metrics.get("validation") or {}
        tv = (teacher.metrics.get("validation") or {}) if teacher else {}
        cfg = run.run_config
        params, size = run.metrics.get("params"), run.metrics.get("size_mb")
        t_params = teacher.metrics.get("params") if teacher else None
        t_size = teacher.metrics.get("size_mb") if teacher else None
        model = cfg.get("model") if run.kind == "teacher" else cfg.get("student")
        if model == "from-teacher":
            layers = (cfg.get("meta") or {}).get("student_layer_map")
            model = f"from teacher ({len(layers)} layers)" if layers else "from teacher"
        rows.append({
            "run": run.name, "role": KIND_NAMES.get(run.kind, run.kind), "model": Path(str(model or "?")).name,
            "alpha / T": {"kd": f"{cfg.get('alpha')} / {cfg.get('temperature')}", "nokd": "1 (no KD)"}.get(
                run.kind, ""),
            "accuracy": _f(v.get("accuracy"), 4), "F1 (w)": _f(v.get("f1_weighted"), 4), "ECE": _f(v.get("ece"), 3),
            "params": f"{params / 1e6:.1f} M" if params else "", "size MB": _f(size, 1),
            "reviews/s": _f(v.get("samples_per_second"), 1),
            "Δ acc (pp)": _delta(v.get("accuracy"), tv.get("accuracy"), 100, "{:+.1f}"),
            "Δ F1 (pp)": _delta(v.get("f1_weighted"), tv.get("f1_weighted"), 100, "{:+.1f}"),
            "Δ ECE": _delta(v.get("ece"), tv.get("ece"), 1, "{:+.3f}"),
            "Δ params": _ratio(params, t_params), "Δ size": _ratio(size, t_size)})
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown_table(df: pd.DataFrame) -> str:
    """The runs table as markdown (wraps to the page width, unlike a wide dataframe)."""
    if df.empty:
        return ""
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _f(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _delta(value, base, scale: float, fmt: str) -> str:
    return "" if value is None or base is None else fmt.format((value - base) * scale)


def _ratio(value, base) -> str:
    return "" if not value or not base else f"{(value / base - 1) * 100:+.0f} %"


def sweep_rows(runs: list[RunInfo]) -> list[dict]:
    return [{"alpha": r.run_config.get("alpha"), "temperature": r.run_config.get("temperature"),
             "accuracy": (r.metrics.get("validation") or {}).get("accuracy"),
             "ece": (r.metrics.get("validation") or {}).get("ece")} for r in runs if r.kind == "kd"]


def build_results_tab(ctx: AppContext):
    empty = gr.Markdown(visible=False, elem_id="results_empty")
    refresh_btn = gr.Button("Refresh", size="sm")
    gr.Markdown("**Runs** on the validation split, each student under its teacher, Deltas against that teacher")
    table = gr.Markdown(elem_id="results_table")
    gr.Markdown("<small>F1 (w): weighted F1. ECE (expected calibration error): how far confidence is from accuracy, "
                "lower is better. reviews/s: validation throughput when the run was scored. Δ acc / Δ F1 in "
                "percentage points; Δ params and Δ size: negative means smaller than the teacher.</small>")
    sweep = gr.Plot(visible=False, label="alpha / T sweep", elem_id="results_sweep")
    with gr.Row():
        run = gr.Dropdown([], label="Run", elem_id="results_run", scale=3)
    with gr.Row():
        reliability = gr.Plot(label="Reliability diagram", elem_id="results_reliability")
        confusion = gr.Plot(label="Confusion matrix", elem_id="results_confusion")
    gr.Markdown("### Where teacher and student disagree")
    with gr.Row():
        teacher = gr.Dropdown([], label="Teacher", allow_custom_value=True, elem_id="results_teacher")
        student = gr.Dropdown([], label="Student", allow_custom_value=True, elem_id="results_student")
        n_rows = gr.Slider(50, 1000, value=300, step=50, label="Validation reviews to score", elem_id="results_n")
    find = gr.Button("Find disagreements", elem_id="results_find")
    summary = gr.Markdown(elem_id="results_summary")
    examples = gr.Dataframe(pd.DataFrame(columns=["review", "true", "teacher", "student"]), interactive=False,
                            wrap=True, elem_id="results_examples", label="Disagreements (✓ = right)",
                            column_widths=["64%", "10%", "13%", "13%"])

    def refresh(current_run, current_teacher, current_student):
        runs = ctx.runs()
        choices = [(f"{r.name} · {KIND_NAMES.get(r.kind, r.kind)}", str(r.path)) for r in runs]
        values = [v for _, v in choices]
        teachers = [str(r.path) for r in runs if r.kind == "teacher"]
        students = [str(r.path) for r in runs if r.kind == "kd"] + [str(r.path) for r in runs if r.kind == "nokd"]
        rows = sweep_rows(runs)
        show_sweep = len({(r["alpha"], r["temperature"]) for r in rows}) >= 2
        preferred = [str(r.path) for r in runs if r.kind == "kd"] + values  # a KD student shows the most
        picked = current_run if current_run in values else (preferred[0] if preferred else None)
        hint = gr.update(value=EMPTY_HINT.format(root=ctx.root), visible=not runs)
        return (markdown_table(results_table(runs)), hint,
                gr.update(choices=choices, value=picked),
                gr.update(choices=choices, value=current_teacher or (teachers[0] if teachers else None)),
                gr.update(choices=choices, value=current_student or (students[0] if students else None)),
                gr.update(value=plots.sweep_heatmap(rows) if show_sweep else None, visible=show_sweep))

    def show_run(path):
        runs = ctx.runs()
        r = next((x for x in runs if str(x.path) == path), None)
        if r is None:
            return plots.reliability_diagram({}), plots.confusion_matrix([])
        t = teacher_of(r, runs)
        bins = {r.name: (r.metrics.get("validation") or {}).get("reliability")}
        eces = {r.name: (r.metrics.get("validation") or {}).get("ece")}
        if t is not None:
            bins[f"teacher {t.name}"] = (t.metrics.get("validation") or {}).get("reliability")
            eces[f"teacher {t.name}"] = (t.metrics.get("validation") or {}).get("ece")
        v = r.metrics.get("validation") or {}
        eces = {k: e for k, e in eces.items() if e is not None}
        return (plots.reliability_diagram(bins, f"Reliability: {r.name}", eces),
                plots.confusion_matrix(v.get("confusion_matrix") or [], title=f"Confusion matrix: {r.name}"))

    @guarded(lambda msg: (f"⚠️ {msg}", gr.skip()), ctx)
    def disagreements(teacher: str, student: str, n_rows: float, progress=gr.Progress()):
        """Score the first n validation reviews of the student's data with both models; list where they differ."""
        if not teacher or not student:
            raise ValueError("Pick a teacher and a student. " + ctx.local_hint())
        t, s = ctx.models.get(ctx.model_name(teacher)), ctx.models.get(ctx.model_name(student))
        data = s.run_config.get("data") or t.run_config.get("data")
        if not data:
            raise ValueError("Neither run records its data source (run_config.json 'data'): pick checkpoints trained "
                             "by kdapp.")
        n = int(n_rows)
        progress(0.0, desc=f"loading the validation split of {data}")
        rows = load_splits(data, max_eval_samples=n)["validation"]
        texts, labels = rows["text"], np.asarray(rows["label"])
        probs = []
        for i, (role, m) in enumerate((("teacher", t), ("student", s))):
            logits = predict_logits(m.model, m.tokenizer, texts, m.max_length, 32, m.truncation, m.head_tokens,
                                    progress=lambda k, total, i=i, role=role: progress(
                                        (i + k / total) / 2, desc=f"{role}: batch {k}/{total}"))
            probs.append(softmax(logits))
        pt, ps = probs
        yt, ys = pt.argmax(-1), ps.argmax(-1)
        differ = np.flatnonzero(yt != ys)
        names = ("negative", "positive")
        table = pd.DataFrame([{"review": _clip(texts[i]), "true": names[labels[i]],
                               "teacher": f"{names[yt[i]]} {pt[i].max():.0%}" + (" ✓" if yt[i] == labels[i] else ""),
                               "student": f"{names[ys[i]]} {ps[i].max():.0%}" + (" ✓" if ys[i] == labels[i] else "")}
                              for i in differ[:50]], columns=["review", "true", "teacher", "student"])
        acc_t, acc_s = (yt == labels).mean(), (ys == labels).mean()
        t_right, s_right = int((yt[differ] == labels[differ]).sum()), int((ys[differ] == labels[differ]).sum())
        text = (f"On the first {len(labels)} validation reviews of `{data}`: teacher {acc_t:.1%}, student {acc_s:.1%}. "
                f"They disagree on **{len(differ)}** ({len(differ) / max(1, len(labels)):.1%}): teacher right on "
                f"{t_right}, student right on {s_right}" + ("; showing the first 50." if len(differ) > 50 else "."))
        return text, table

    refresher = Refresher(refresh, [run, teacher, student], [table, empty, run, teacher, student, sweep])
    refresh_btn.click(refresh, refresher.inputs, refresher.outputs, api_name="results")
    run.change(show_run, run, [reliability, confusion], api_visibility="private")
    find.click(disagreements, [teacher, student, n_rows], [summary, examples], api_name="disagreements",
               concurrency_limit=1, concurrency_id="benchmark")  # scoring 1,000 reviews is heavy: one at a time
    return refresher


def _clip(text: str, width: int = 300) -> str:
    text = " ".join(str(text).replace("<br />", " ").split())
    return text if len(text) <= width else text[: width - 1] + "…"
