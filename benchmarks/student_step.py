"""The KD student's training step that benchmarks/omp_wait.py, dropout_masks.py, frozen_embeddings.py,
hidden_dropout.py, fp32_attention.py, frozen_layers.py and shared_layers.py time, how the last five alternate their
arms, and how they all save their reports.

It is the step of the speed benchmark's logit-cache pair (benchmarks/speed.py, kdapp_2ep_cache*): a 3-layer student
made from the teacher (layers 0, 2, 4), kdapp's CPU dropout, last layer at [CLS] only, 16 reviews of
../shared/data/imdb/train.parquet in length-grouped batches (at most 256 tokens) in a shuffled order, the KD loss
against fixed soft targets, gradients clipped at 1.0, fused AdamW; under bf16 autocast for precision "bf16". The
teacher is checkpoints/cpu-scale/teacher, else the pip-installed all-MiniLM-L6-v2: the step's time does not depend
on the weights. Call it inside kdapp.memory.keep_freed_memory(), as a training run does.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "imdb" / "train.parquet"
TEACHER = ROOT / "checkpoints" / "cpu-scale" / "teacher"
BATCH, REVIEWS = 16, 640


def student_step(data, precision: str, attention_dropout: float = 0.0, reviews: int = REVIEWS,
                 freeze_word_embeddings: bool = False, hidden_dropout: float | None = None, freeze_layers: int = 0):
    """(step, batches): step(batch) trains the student on one batch (a list of row numbers); step.forward_backward(
    batch, weight=1.0) only adds the batch's gradients to step.student's and returns its logits; step.trained and
    step.optimizer are the trained parameters and their fused AdamW; step.teacher is the teacher the student was made
    from and step.inputs(batch) the batch's padded model inputs. As the run options do:
    freeze_word_embeddings, the word embeddings get no gradient, clipping or AdamW update; hidden_dropout, every
    dropout but the attention's at that p (None: the model's own, 0.1); freeze_layers, every embedding and the
    first N layers get none either (the backward pass stops above them)."""
    import pandas as pd
    import torch

    from kdapp.cls_only import use_cls_only
    from kdapp.distill import distillation_loss
    from kdapp.dropout import use_fast_dropout
    from kdapp.encoding import encode
    from kdapp.inference import pad_batch
    from kdapp.models import (encoder_layers, load_pair, minilm_path, set_attention_dropout, set_hidden_dropout,
                              student_from_teacher)

    teacher, tokenizer = load_pair(str(TEACHER if TEACHER.is_dir() else minilm_path()))
    rows = pd.read_parquet(data).sample(reviews, random_state=1)
    ids = encode(tokenizer, rows["text"].tolist(), 256, "head_tail", None)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    batches = [batches[i] for i in torch.randperm(len(batches), generator=torch.Generator().manual_seed(0))]
    labels, soft = torch.tensor(rows["label"].to_numpy()), torch.randn(len(ids), 2)
    student = student_from_teacher(teacher, 3)
    set_attention_dropout(student, attention_dropout)
    if hidden_dropout is not None:
        set_hidden_dropout(student, hidden_dropout)
    use_fast_dropout(student)
    use_cls_only(student)
    student.get_input_embeddings().weight.requires_grad_(not freeze_word_embeddings)
    for module in (student.base_model.embeddings, *encoder_layers(student)[:freeze_layers]) if freeze_layers else ():
        module.requires_grad_(False)
    trained = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5, fused=True)
    bf16 = precision == "bf16"

    def forward_backward(batch: list[int], weight: float = 1.0) -> torch.Tensor:
        """The batch's loss, times weight, backward (gradients accumulate in the student); returns the student's
        logits. weight: a part of a batch weighs its share of the rows, so the parts' gradients sum to the batch's."""
        inputs = pad_batch([ids[i] for i in batch], tokenizer.pad_token_id or 0, "cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = student(**inputs).logits
        loss, _, _ = distillation_loss(logits, soft[batch], labels[batch])
        (loss * weight if weight != 1.0 else loss).backward()
        return logits.detach()

    def step(batch: list[int]) -> None:
        forward_backward(batch)
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    step.forward_backward, step.student, step.trained, step.optimizer = forward_backward, student, trained, optimizer
    step.teacher = teacher  # the student's source (a separate copy)
    step.inputs = lambda batch: pad_batch([ids[i] for i in batch], tokenizer.pad_token_id or 0, "cpu")
    return step, batches


def alternate(steps: dict, batches: list, rounds: int, label: str) -> dict[str, list[float]]:
    """Every step's seconds, per arm: each batch trains every arm's student once, the order alternating from batch
    to batch (and round to round), in this process, so the machine's drift reaches the arms alike; after a warm-up
    on 4 batches (the allocator's heap, oneDNN's kernels). Call inside kdapp.memory.keep_freed_memory()."""
    arms = list(steps)
    for batch in batches[:4]:
        for step in steps.values():
            step(batch)
    seconds = {arm: [] for arm in arms}
    for r in range(rounds):
        for n, batch in enumerate(batches):
            for arm in (arms if (n + r) % 2 == 0 else arms[::-1]):
                start = time.perf_counter()
                steps[arm](batch)
                seconds[arm].append(time.perf_counter() - start)
        print(f"{label}: round {r + 1}: " + ", ".join(f"{arm} {1e3 * sum(t) / len(t):.1f} ms"
                                                      for arm, t in seconds.items()), flush=True)
    return seconds


def summary(seconds: dict[str, list[float]]) -> dict[str, float]:
    """Each arm's mean s/step over its timed steps, and the first arm's time over the second's (> 1: the second is
    faster)."""
    mean = {arm: sum(times) / len(times) for arm, times in seconds.items()}
    first, second = list(mean)[:2]
    return {"s_per_step": {arm: round(m, 4) for arm, m in mean.items()}, "speedup": round(mean[first] / mean[second], 3)}


def ab_main(doc: str, arms: tuple[str, str], build, describe, precisions: tuple[str, ...] = ("bf16", "fp32"),
            recipes: dict[str, dict] | None = None) -> tuple:
    """The command line and the runs of an A/B of the student's step (frozen_embeddings.py, hidden_dropout.py,
    fp32_attention.py): for each precision (of `precisions`), build(data, precision, arm) -> (step, batches) makes
    both arms' students alike (the batches are seeded alike), describe(step) says something about each arm's
    student, and `alternate` times them. recipes: named sets of keyword arguments for build, picked by --recipe (the
    first by default). Returns (args, env, table, detail, described, threads): table[precision] is `summary`'s,
    detail[precision] every step's seconds, described[precision][arm] describe's answer."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="passes over the batches per precision")
    p.add_argument("--precision", nargs="+", choices=list(precisions),
                   help="the student's precision (default: " + " and ".join(precisions) + ", bf16 only where the "
                        "CPU has native bf16)")
    p.add_argument("--data", default=str(DATA), help="IMDb parquet (read, never copied)")
    p.add_argument("--out", help="also write the table and every step's time to OUT.md and OUT.json")
    if recipes:
        p.add_argument("--recipe", choices=list(recipes), default=next(iter(recipes)),
                       help="the student's recipe (default: %(default)s)")
    args = p.parse_args()
    options = recipes[args.recipe] if recipes else {}

    import kdapp  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads libgomp)
    import torch
    from kdapp.benchmark import bench_env
    from kdapp.inference import native_bf16
    from kdapp.memory import keep_freed_memory
    args.precision = args.precision or [x for x in precisions if x != "bf16" or native_bf16()]
    env, table, detail, described = bench_env("cpu"), {}, {}, {}
    for precision in args.precision:
        built = {arm: build(args.data, precision, arm, **options) for arm in arms}
        steps, batches = {arm: step for arm, (step, _) in built.items()}, built[arms[0]][1]
        described[precision] = {arm: describe(step) for arm, step in steps.items()}
        with keep_freed_memory():
            seconds = alternate(steps, batches, args.rounds, precision)
        table[precision], detail[precision] = summary(seconds), seconds
    return args, env, table, detail, described, torch.get_num_threads()


def ab_report(args, env: dict, threads: int, recipe: str, arms: tuple[str, str], header: list[str], table: dict,
              last_cell, title: str, payload: dict) -> None:
    """ab_main's table (one row per precision: each arm's s/step, the speedup, last_cell(precision)) under a line
    naming the machine and the step's recipe, saved with save_report."""
    lines = [f"{env['cpu_model']}, {env['cpu_count']} CPUs ({', '.join(env['cpu_flags'])}), torch {env['torch']}, "
             f"{threads} threads; the student's step (benchmarks/student_step.py{recipe}), each batch once with each "
             f"arm, alternating; mean over {args.rounds} round(s)", "",
             "| student precision | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for precision, row in table.items():
        lines.append(f"| {precision} | {row['s_per_step'][arms[0]]:.3f} s | {row['s_per_step'][arms[1]]:.3f} s | "
                     f"{row['speedup']:.2f}x | {last_cell(precision)} |")
    save_report(args.out, title, lines, {"setup": vars(args), "env": env, "table": table} | payload)


def save_report(out: str | None, title: str, lines: list[str], payload: dict, footer: str = "") -> None:
    """Print the report's lines; with out, also write them under the title and the command that ran to OUT.md, and
    the command and payload to OUT.json."""
    print("\n" + "\n".join(lines))
    if not out:
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    script = Path(sys.argv[0]).name
    command = " ".join([f"python benchmarks/{script}", *sys.argv[1:]])
    path.with_suffix(".md").write_text(f"# {title}\n\n`{command}`\n\n" + "\n".join(lines) + "\n"
                                       + (f"\n{footer}\n" if footer else ""))
    path.with_suffix(".json").write_text(json.dumps({"command": command} | payload, indent=1))
