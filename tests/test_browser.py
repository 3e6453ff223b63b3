"""The app in a real browser: headless Debian Chromium driven by Playwright (STACK_NOTES 2).

Compare two checkpoints, train a tiny teacher and watch its loss curve grow, cancel a run, run a small benchmark.
Screenshots go to a temporary folder (printed; kept by pytest's tmp_path retention).
"""
import shutil
from pathlib import Path

import pytest

from app_fixtures import launch, make_runs
from conftest import tiny_bert
from kdapp.jobs import JobRegistry
from kdapp.ui import build_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
CURVE_POINTS = ("() => { const g = document.querySelector('#train_curve .js-plotly-plot');"
                " return g && g.data && g.data[0] && g.data[0].x ? g.data[0].x.length : 0; }")

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def app(tmp_path_factory, tokenizer, reviews_parquet):
    root = tmp_path_factory.mktemp("checkpoints")
    paths = make_runs(root, tokenizer, reviews_parquet, tiny_bert)
    demo = build_app(JobRegistry(), root)
    url = launch(demo)
    yield url, paths, demo.kdapp_context
    demo.kdapp_context.registry.cancel()
    demo.close()


@pytest.fixture(scope="module")
def page(app):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_default_timeout(120_000)  # a loaded 2-core machine can take a while to serve the first page
        page.goto(app[0], wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_selector("#train_start", timeout=120_000)
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {folder}")
    return folder


def set_value(page, selector, value, enter=False, check=True):
    """Type a value and check it stuck: a field that mounts late (inside a just-opened accordion) can be reset to its
    initial value by its first render on a loaded machine, and the run would start with the default (seen in CI).
    check=False for a multiselect, whose box empties once Enter has turned the text into a chip."""
    box = page.locator(f"{selector} input, {selector} textarea").first
    for _ in range(5):
        box.fill(str(value))
        if enter:
            box.press("Enter")
        box.blur()
        page.wait_for_timeout(300)
        if not check or box.input_value() == str(value):
            return
    raise AssertionError(f"{selector} kept {box.input_value()!r} after typing {value!r}")


def status_text(page, prefix="train"):
    return page.input_value(f"#{prefix}_status textarea")


def test_compare_two_checkpoints(page, shots):
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("() => document.querySelector('#compare_teacher input').value.includes('teacher-tiny')")
    set_value(page, "#compare_text", "the acting was superb and the story wonderful")
    page.click("#compare_btn")
    page.wait_for_function("() => document.querySelector('#compare_info').innerText.includes(' ms')", timeout=60000)
    info = page.inner_text("#compare_info")
    assert "teacher" in info and "student" in info and "agree" in info
    for side in ("teacher", "student"):
        assert any(x in page.inner_text(f"#compare_{side}_label") for x in ("POSITIVE", "NEGATIVE"))
    page.screenshot(path=str(shots / "compare.png"), full_page=True)


def fill_tiny_teacher_form(page, app, max_steps):
    _, _, ctx = app
    page.get_by_role("tab", name="Train teacher").click()
    set_value(page, "#train_model", str(app[1]["teacher"]), enter=True)
    set_value(page, "#train_data", str(Path(ctx.runs()[0].run_config["data"])), enter=True)
    set_value(page, "#train_max_eval", 16)
    set_value(page, "#train_batch", 8)
    set_value(page, "#train_max_length", 16)
    set_value(page, "#train_lr", 0.001)
    if not page.is_visible("#train_max_steps"):
        page.get_by_text("Advanced").first.click()
        page.wait_for_selector("#train_max_steps input", state="visible")
    set_value(page, "#train_max_steps", max_steps)
    set_value(page, "#train_logging_steps", 1)
    set_value(page, "#train_max_steps", max_steps)  # checked again last: it decides the curve's length below


def test_train_tiny_teacher_and_watch_the_curve_grow(page, app, shots):
    # 600 tiny steps (~70 per second here): at 40 the whole run fitted before the curve was first read, which then
    # could not grow any more; at 200 the first read found 49 points
    fill_tiny_teacher_form(page, app, max_steps=600)
    page.click("#train_start")
    page.wait_for_function(f"() => ({CURVE_POINTS})() >= 2", timeout=90000)
    first = page.evaluate(CURVE_POINTS)
    page.wait_for_function(f"() => ({CURVE_POINTS})() > {first}", timeout=90000)  # it grows while training
    page.wait_for_function("() => document.querySelector('#train_status textarea').value.startsWith('done')",
                           timeout=120000)
    assert page.evaluate(CURVE_POINTS) == 600
    assert "Finished runs" in page.inner_text("#train_results")
    page.screenshot(path=str(shots / "train.png"), full_page=True)


def test_second_tab_attaches_to_the_running_job_and_cancels_it(page, app, shots):
    fill_tiny_teacher_form(page, app, max_steps=5000)
    page.click("#train_start")
    page.wait_for_function(f"() => ({CURVE_POINTS})() >= 3", timeout=90000)
    other = page.context.new_page()  # a second browser tab (or a reload) re-attaches on page load
    other.goto(app[0], wait_until="domcontentloaded", timeout=120_000)
    other.wait_for_function(f"() => ({CURVE_POINTS})() >= 3", timeout=60000)
    assert status_text(other).startswith("running")
    other.click("#train_cancel")
    for p in (other, page):  # both tabs see the end
        p.wait_for_function("() => document.querySelector('#train_status textarea').value.startsWith('cancelled')",
                            timeout=60000)
    assert "cancelled at step" in status_text(page)
    page.screenshot(path=str(shots / "cancel.png"), full_page=True)
    other.close()


def test_small_benchmark(page, app, shots):
    page.get_by_role("tab", name="Benchmark").click()
    page.click("#bench_models .remove-all")
    set_value(page, "#bench_models", str(app[1]["kd"]), enter=True, check=False)
    page.fill("#bench_len input[type=number]", "16")
    page.press("#bench_len input[type=number]", "Enter")
    page.locator("#bench_batch label", has_text="100").click()  # untick 100: batch 1 only
    page.get_by_text("More options").click()
    set_value(page, "#bench_n_texts", 4)
    set_value(page, "#bench_repeats", 1)
    page.click("#bench_run")
    page.wait_for_function("() => document.querySelector('#bench_table').innerText.includes('Latency, batch 1')",
                           timeout=90000)
    assert "Throughput" in page.inner_text("#bench_table")
    page.wait_for_selector("#bench_chart .js-plotly-plot")
    page.screenshot(path=str(shots / "benchmark.png"), full_page=True)


def test_distill_presets_fill_the_form(page, shots):
    """The GPU preset picks README's distilbert-base-uncased student (its box shows, the layer count hides), the CPU
    preset a student made from the teacher, and both fill the weight decay the measured recipes had."""
    page.get_by_role("tab", name="Distill student").click()
    page.click("#distill_recipe_gpu")
    page.wait_for_selector("#distill_student", state="visible")
    page.wait_for_selector("#distill_layers", state="hidden")
    assert page.locator("#distill_student input").first.input_value() == "distilbert-base-uncased"
    assert page.locator("#distill_weight_decay input").first.input_value() == "0.01"
    page.click("#distill_recipe_cpu")
    page.wait_for_selector("#distill_layers", state="visible")
    page.wait_for_selector("#distill_student", state="hidden")
    assert page.locator("#distill_max_length input").first.input_value() == "256"
    page.screenshot(path=str(shots / "distill_presets.png"), full_page=True)
