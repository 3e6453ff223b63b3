"""Tab "Benchmark": latency, throughput, parameters and disk size of checkpoints and of the bert-base / distilbert-base
architectures (random weights from their configs: no download, same timings), as the seed's table and a bar chart."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import torch

from .. import plots
from ..benchmark import markdown_table, run_benchmark
from ..models import resolve
from .common import ARCH_CHOICES, AppContext, Refresher, guarded, local_imdb, password_box, read_json

EXPLAIN = "\n".join([
    "**What the numbers mean**",
    "- **Latency**: how long one batch of reviews takes, in milliseconds (median of the timed batches / the slowest "
    "10 %). Lower is better; batch 1 is what one user waiting for one prediction feels.",
    "- **Throughput**: reviews classified per second at the largest batch size: how fast a pile of reviews gets "
    "through. Higher is better.",
    "- **Parameters**: how many numbers the model learned (M = millions). Fewer usually means faster and smaller.",
    "- **Disk size**: the size of the model's weight file in MB: what you download or ship.",
    "- **Peak RSS**: the most memory the process used while timing, in MB; on a GPU, **Peak GPU memory** is the "
    "most the model's tensors held on the card (torch.cuda.max_memory_allocated).",
    "- **Delta**: each model compared with the first one, e.g. \"2.0x faster\" or \"-40 % size\".",
    "- **Busy machine**: other programs (or a training job of this app) used the CPUs while timing, so the figures "
    "are slower than on an idle machine."])

BATCH_CHOICES = [1, 8, 32, 100]


def check_length(models: list[str], max_length: int) -> None:
    """Random rows are exactly max_length tokens: refuse a length beyond a model's position table, by name."""
    for m in models:
        limit = read_json(Path(resolve(m)) / "config.json").get("max_position_embeddings")
        if limit and max_length > limit:
            raise ValueError(f"Sequence length {max_length} is beyond {Path(m).name}'s limit of {limit} tokens: "
                             f"choose {limit} or less.")


def build_bench_tab(ctx: AppContext):
    gr.Markdown("Time models on this machine. The two `arch:` entries are bert-base-uncased and "
                "distilbert-base-uncased built from their configurations with random weights: they need no download "
                "and take as long as the trained models.")
    with gr.Row():
        models = gr.Dropdown(ARCH_CHOICES, value=list(ARCH_CHOICES), multiselect=True, allow_custom_value=True,
                             label="Models", elem_id="bench_models", scale=3,
                             info="checkpoints, the two architectures, or type a hub id / local folder")
        batch_sizes = gr.CheckboxGroup(BATCH_CHOICES, value=[1, 100], label="Batch sizes", elem_id="bench_batch")
    with gr.Row():
        max_length = gr.Slider(16, 512, value=128, step=16, label="Sequence length (tokens)", elem_id="bench_len")
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        device = gr.Radio(devices, value=devices[-1], label="Device", elem_id="bench_device")
        on_gpu = torch.cuda.is_available()
        precisions = gr.CheckboxGroup(["fp32", "bf16", "int8"] + (["fp16", "int4"] if on_gpu else []),
                                      value=["fp32"], label="Precision", elem_id="bench_precision",
                                      info="bf16 / int8 trade a little accuracy for speed"
                                           + ("; on the GPU int8 / int4 (bitsandbytes) trade it for memory"
                                              if on_gpu else ""))
    with gr.Accordion("More options", open=False):
        with gr.Row():
            inputs = gr.Radio(["random tokens"] + (["real reviews"] if local_imdb() else []), value="random tokens",
                              label="Inputs", info="random rows of exactly the sequence length, or IMDb reviews "
                                                   "truncated to it")
            n_texts = gr.Number(100, label="Reviews per timed pass", precision=0, elem_id="bench_n_texts")
            repeats = gr.Number(3, label="Timed passes", precision=0, elem_id="bench_repeats")
            cls_only = gr.Checkbox(False, label="Last layer at [CLS] only", elem_id="bench_cls_only",
                                   info="kdapp's inference path (Compare, evaluate, predict): the same predictions, "
                                        "less work; off: the models' full forward, as in the seed's table")
    password = password_box(ctx, "bench")
    run = gr.Button("Run benchmark", variant="primary", elem_id="bench_run")
    table = gr.Markdown(elem_id="bench_table")
    chart = gr.Plot(plots.latency_bars([]), label="Latency and throughput", elem_id="bench_chart")
    gr.Markdown(EXPLAIN)

    @guarded(lambda msg: (f"⚠️ {msg}", gr.skip()), ctx)
    def benchmark(models, batch_sizes, max_length, device, precisions, inputs, n_texts, repeats, password="",
                  cls_only=False, progress=gr.Progress()):
        """Time every model x precision x batch size; returns (markdown table, bar chart)."""
        ctx.unlock(password)
        if isinstance(models, str):
            models = [models]
        models = [ctx.model_name(m) for m in models or [] if m and m.strip()]
        check_length(models, int(max_length))
        registry = ctx.registry
        job, generation = registry.active(), registry.generation
        result = run_benchmark(models, [int(b) for b in batch_sizes or []], int(max_length), device,
                               tuple(precisions or ()), data=local_imdb() if inputs == "real reviews" else None,
                               n_texts=max(1, int(n_texts or 1)), repeats=max(1, int(repeats or 1)),
                               progress=lambda fraction, message: progress(fraction, desc=message),
                               cls_only=bool(cls_only))
        job = job or registry.active()
        trained = job is not None or registry.generation != generation  # a job ran (or ended) while timing
        note = (f"**A training job ran in this app while timing**{f' ({job.title})' if job else ''}: it shares the "
                "machine, so the figures are slower than on an idle one.\n\n" if trained else "")
        return note + markdown_table(result), plots.latency_bars(result["rows"])

    run.click(benchmark, [models, batch_sizes, max_length, device, precisions, inputs, n_texts, repeats, password,
                          cls_only], [table, chart], api_name="benchmark", concurrency_limit=1, concurrency_id="benchmark")

    def refresh(current):
        runs = ctx.choices()
        choices = runs + [(a, a) for a in ARCH_CHOICES]
        return gr.update(choices=choices, value=current or list(ARCH_CHOICES))

    return Refresher(refresh, [models], [models])
