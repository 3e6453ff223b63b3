"""Tab "Compare": one review, the teacher's and the student's predictions side by side, with latency and agreement."""
from __future__ import annotations

import time

import gradio as gr

from ..encoding import MAX_REVIEW_CHARS, review_windows
from ..inference import predict, reading_length
from .common import AppContext, Refresher, guarded

EXAMPLES = [
    "One of the best films I have seen in years. The acting is superb, the story moving, and the ending stayed with "
    "me for days.",
    "A complete waste of two hours. The plot makes no sense, the dialogue is wooden and I nearly fell asleep.",
    "The first half is slow and the lead is miscast, but the last forty minutes are gripping and beautifully shot.",
    "I expected to hate it after the reviews, yet I laughed the whole way through. Silly, but a lot of fun.",
    "Not terrible, not good either. Forgettable: I could not tell you the plot a week later.",
]
EMPTY_HINT = ("**No trained checkpoints yet.** Train a teacher in *Train teacher* (try *Quick CPU run*), then a "
              "student in *Distill student*; or type a hub id or a local model folder into the pickers below.")


def build_compare_tab(ctx: AppContext):
    empty = gr.Markdown(EMPTY_HINT, visible=False, elem_id="compare_empty")
    with gr.Row():
        teacher = gr.Dropdown([], label="Teacher", allow_custom_value=True, elem_id="compare_teacher",
                              info="a checkpoint, or type a hub id / local folder")
        student = gr.Dropdown([], label="Student", allow_custom_value=True, elem_id="compare_student",
                              info="a checkpoint, or type a hub id / local folder")
    text = gr.Textbox(label="Review", lines=4, placeholder="Type or paste a movie review…", elem_id="compare_text")
    gr.Examples(EXAMPLES, inputs=text, label="Example reviews (click one)")
    whole = gr.Checkbox(False, label="Read the whole review", elem_id="compare_windows",
                        info="a review longer than a model's max_length is read as half-overlapping windows and their "
                             "logits averaged; unset: as the model was trained (its truncation)")
    button = gr.Button("Compare", variant="primary", elem_id="compare_btn")
    with gr.Row():
        teacher_label = gr.Label(label="Teacher", num_top_classes=2, elem_id="compare_teacher_label")
        student_label = gr.Label(label="Student", num_top_classes=2, elem_id="compare_student_label")
    info = gr.Markdown(elem_id="compare_info")

    @guarded(lambda msg: (None, None, f"⚠️ {msg}"), ctx)
    def compare(text: str, teacher: str, student: str, windows: bool = False):
        """Predict one review with both models: (teacher probabilities, student probabilities, summary).

        windows: each model reads the whole review (max_length windows, logits averaged)."""
        if not (text or "").strip():
            raise ValueError("Type or paste a review first (or click an example).")
        if not (teacher or student):
            raise ValueError("Pick a teacher and/or a student. " + ctx.local_hint())
        outs, lines = [], []
        for role, name in (("teacher", teacher), ("student", student)):
            if not name:
                outs.append(None)
                continue
            m = ctx.models.get(ctx.model_name(name))
            start = time.perf_counter()
            p = predict(m.model, m.tokenizer, [text], max_length=m.max_length, truncation=m.truncation,
                        head_tokens=m.head_tokens, batch_size=64 if windows else 1, windows=bool(windows))[0]
            ms = (time.perf_counter() - start) * 1e3
            labels = m.model.config.id2label
            outs.append(({labels.get(i, str(i)): prob for i, prob in enumerate(p["probs"])}, p, ms))
            length = reading_length(m.model, m.max_length)
            n = len(review_windows(m.tokenizer, [text], length)[0]) if windows else 1
            lines.append(f"**{role}** {p['label'].lower()} ({p['score']:.1%}) in **{ms:.1f} ms**"
                         + (f" ({n} windows of {length} tokens)" if n > 1 else ""))
        done = [o for o in outs if o]
        if len(done) == 2:
            (_, pt, mt), (_, ps, ms_) = done
            agree = pt["label"] == ps["label"]
            speed = (f" The student was {mt / ms_:.1f}× faster." if mt >= ms_ else
                     f" The student was {ms_ / mt:.1f}× slower.") if ms_ > 0 and mt > 0 else ""
            lines.append(("✅ They **agree**." if agree else "⚠️ They **disagree**.") + speed)
        if len(text) > MAX_REVIEW_CHARS:
            lines.append(f"Note: the review has {len(text):,} characters; only the first {MAX_REVIEW_CHARS:,} were "
                         "read" + ("." if windows else " (the models see at most max_length tokens of them anyway)."))
        how = "its windows batched" if windows else "batch 1"
        return (outs[0][0] if outs[0] else None, outs[1][0] if outs[1] else None,
                " · ".join(lines) + f"\n\n<small>Latency: one review ({how}), on this machine, including "
                                    "tokenization.</small>")

    inputs = [text, teacher, student, whole]
    button.click(compare, inputs, [teacher_label, student_label, info], api_name="compare")
    text.submit(compare, inputs, [teacher_label, student_label, info], api_visibility="private")

    def refresh(current_teacher, current_student):
        teachers = ctx.choices(("teacher",))
        students = ctx.choices(("kd",)) + ctx.choices(("nokd",))
        t = current_teacher or (teachers[0][1] if teachers else None)
        s = current_student or (students[0][1] if students else None)
        return (gr.update(choices=teachers + students, value=t), gr.update(choices=students + teachers, value=s),
                gr.update(visible=not (teachers or students)))

    return Refresher(refresh, [teacher, student], [teacher, student, empty])
