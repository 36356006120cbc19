"""The app in a real browser (heavy): headless Debian Chromium driven by Playwright opens and runs every tab.

Checks that text outputs and plotly plots render, that bad input shows an error, and that the page
makes no request off this machine (no CDN, fonts or analytics). Screenshots go to
artifacts/screenshots/ (git-ignored). Skips when Playwright or /usr/bin/chromium is missing
(``apt-get install chromium``; ``pip install playwright``; never ``playwright install``).
"""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

from app_server import bench_output, hold_at, running_app, stop_signal  # noqa: E402
from cola_core.pocket import default_checkpoint, resolve_checkpoint  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
TIMEOUT_MS = 30_000

pytestmark = [pytest.mark.heavy,
              pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian chromium is not installed (/usr/bin/chromium)")]


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module's pages (Playwright's sync API allows one driver at a time)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@contextmanager
def browser_page(browser, ctx, url: str):
    """A page on the app at ``url`` that records (and blocks) every request leaving 127.0.0.1."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        pg.set_default_timeout(TIMEOUT_MS)
        pg.external = []
        pg.ctx = ctx

        def guard(route):
            host = urlparse(route.request.url).hostname
            if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
                route.continue_()
            else:
                pg.external.append(route.request.url)
                route.abort()

        pg.route("**/*", guard)
        pg.goto(url)
        pg.get_by_text("fingerprint").first.wait_for()
        yield pg
    finally:
        pg.close()


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    """One browser page on the app over the tiny fixture, with a tiny bench run it may read."""
    bench_root = tmp_path_factory.mktemp("bench_root")
    bench_output(bench_root)
    with running_app(tmp_path_factory.mktemp("projections"), bench_root=[bench_root]) as (ctx, url), \
            browser_page(browser, ctx, url) as pg:
        pg.bench = bench_root / "bench"
        yield pg


@pytest.fixture(scope="module")
def pocket_page(browser, tmp_path_factory):
    """A page on the app over the pocket checkpoint: it ends texts with EOS and leaves the manifold at guidance 7;
    the Chat tab talks to pocket-chat, as `serve` runs them by default."""
    with running_app(tmp_path_factory.mktemp("pocket"), checkpoint=default_checkpoint(),
                     chat_checkpoint=resolve_checkpoint(None, chat=True)) as (ctx, url), \
            browser_page(browser, ctx, url) as pg:
        yield pg


def visible_plots(pg) -> int:
    return pg.locator(".js-plotly-plot:visible").count()


def wait_plots(pg, count: int) -> None:
    pg.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {count}",
                         timeout=TIMEOUT_MS)
    assert visible_plots(pg) >= count


def open_tab(pg, name: str) -> None:
    pg.get_by_role("tab", name=name).click()


def wait_event(pg, event: threading.Event, failure: str) -> None:
    """Wait for a server-side event (a held hook, a Stop reaching the sampler), letting the page run meanwhile
    (its requests pass the route guard only while Playwright is called)."""
    for _ in range(TIMEOUT_MS // 50):
        if event.is_set():
            return
        pg.wait_for_timeout(50)
    raise AssertionError(failure)


def test_status_bar_and_tabs(page):
    page.get_by_role("tab", name="Inside").wait_for()
    assert page.get_by_text("cpu", exact=True).count() >= 1
    assert [t.inner_text() for t in page.get_by_role("tab").all()] == ["Trajectories", "Diagnostics", "Guidance lab",
                                                                     "Latent lab", "Inside", "Bench", "Chat"]


def test_trajectories_tab_streams_and_plots(page):
    open_tab(page, "Trajectories")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Finished").wait_for()
    text = page.get_by_label("Prompt + generated text").input_value()
    assert text.startswith("a small animal that") and len(text) > len("a small animal that")
    assert page.get_by_text('"v_diff_norm"').count() == 1
    wait_plots(page, 3)                                                         # paths, norms, the monitor
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() > 8   # backdrop + block paths
    assert page.locator("#trajectory-monitor .barlayer .point").count() >= 1
    page.screenshot(path=str(SHOTS / "trajectories.png"), full_page=True)


def test_stop_button_cancels_a_long_run(page, monkeypatch):
    """The sampler is held after its second step until the Stop click has set the run's stop flag."""
    stopped = stop_signal(page.ctx, monkeypatch)
    open_tab(page, "Trajectories")
    steps = page.get_by_label("number input for Steps per block")
    steps.fill("200")
    steps.press("Enter")
    with page.ctx.workbench.hooks(post_update=hold_at(0, 1, stopped)):
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Sampling — block").wait_for()
        page.get_by_role("button", name="Stop").click()
        page.get_by_text("Stopped").wait_for()
    assert page.get_by_label("number input for Scrub: step").input_value() != ""
    steps.fill("16")
    steps.press("Enter")


def test_diagnostics_tab_and_error_message(page):
    open_tab(page, "Diagnostics")
    page.get_by_role("button", name="Diagnose").click()
    page.get_by_text("3 texts,").wait_for()
    wait_plots(page, 5)
    assert page.get_by_text("informative units (means follow the text)").count() == 1
    assert page.locator(".js-plotly-plot .heatmaplayer, .js-plotly-plot .hm").count() >= 1
    page.screenshot(path=str(SHOTS / "diagnostics.png"), full_page=True)
    box = page.get_by_label("Texts (one per line)")
    original = box.input_value()
    box.fill("   ")
    page.get_by_role("button", name="Diagnose").click()
    page.get_by_text("no texts: type one text per line").first.wait_for()
    box.fill(original)


def test_guidance_lab_grid(page):
    open_tab(page, "Guidance lab")
    page.get_by_label("X: guidance values").fill("1, 7")
    page.get_by_label("Y values").fill("4")
    page.get_by_role("button", name="Run grid").click()
    page.get_by_text("Done").wait_for()
    assert page.locator(".cola-grid td .gen").count() == 4      # 2 guidance x 1 steps x 2 prompts
    assert page.locator(".cola-grid th", has_text="guidance 7").count() == 1
    wait_plots(page, 2)
    page.screenshot(path=str(SHOTS / "guidance_lab.png"), full_page=True)


def test_latent_lab_encode_and_interpolate(page):
    open_tab(page, "Latent lab")
    page.get_by_role("button", name="Encode A and B").click()
    page.get_by_text('"token_accuracy"').first.wait_for()
    wait_plots(page, 1)
    page.locator("input[type=range]:visible").first.fill("0.9")
    page.get_by_text('"alpha": 0.9').wait_for()
    assert page.get_by_label("Decoded", exact=True).input_value() != ""
    page.screenshot(path=str(SHOTS / "latent_lab.png"), full_page=True)


def test_bench_tab_loads_filters_and_opens_a_sample_in_trajectories(page):
    open_tab(page, "Bench")
    folder = page.get_by_label("Bench output folder")
    folder.fill(str(page.bench))
    folder.press("Enter")
    page.get_by_role("button", name="Load folder").click()
    page.get_by_text("protocol official").wait_for()
    wait_plots(page, 1)
    assert page.locator(".js-plotly-plot .barlayer .point").count() >= 4      # 3 tasks + the average
    page.get_by_role("combobox", name="Task").click()
    page.get_by_role("option", name="squad").click()
    page.get_by_text("of 2 squad samples").wait_for()          # the task filter applied before the verdict changes
    page.get_by_label("all", exact=True).check()
    page.get_by_text("all of 2 squad samples").wait_for()
    page.screenshot(path=str(SHOTS / "bench.png"), full_page=True)
    page.get_by_role("button", name="Open in Trajectories (re-run)").click()
    page.get_by_text("The re-run reproduces the bench's").wait_for()
    assert page.get_by_role("tab", name="Trajectories").get_attribute("aria-selected") == "true"
    assert page.get_by_label("Prompt", exact=True).input_value().startswith("Context: The Normans")
    assert page.get_by_text("Bench sample squad").is_visible()                  # score and answer beside it
    wait_plots(page, 2)                                                          # the trajectory plots
    page.screenshot(path=str(SHOTS / "bench_opened.png"), full_page=True)
def shown(pg, label: str):
    """The visible field labelled ``label`` (other tabs have fields of the same name)."""
    return pg.get_by_label(label).filter(visible=True)


def wait_heatmap(pg, elem_id: str, title: str) -> None:
    """Wait until the plot ``elem_id`` has drawn a heatmap under a title containing ``title``."""
    plot = pg.locator(f"#{elem_id} .js-plotly-plot")
    plot.locator(".main-svg .hm image").first.wait_for()
    plot.locator(".gtitle", has_text=title).wait_for()


def test_inside_tab_attention_lens_and_patching(page):
    open_tab(page, "Inside")
    tokens = shown(page, "number input for Max new tokens")
    tokens.fill("8")
    tokens.press("Enter")
    page.get_by_role("button", name="Run and cache").click()
    page.get_by_text("Done — 2 block(s)").wait_for()
    wait_heatmap(page, "inside-attention", "Attention: layer 0, head 0, cond pass, step 0")
    wait_heatmap(page, "inside-lens", "x0-lens (guided)")
    attention = page.locator("#inside-attention")
    assert attention.locator(".annotation-text", has_text="prompt").count() == 1        # position kinds labelled
    assert attention.locator(".annotation-text", has_text="block 0 (current)").count() == 1
    assert page.locator("#inside-lens .hm image").count() == 1
    assert shown(page, "x0-lens at the chosen block, step and layer").input_value().startswith("block 0, step 0 (t = ")
    head = shown(page, "number input for Head")
    head.fill("3")
    head.press("Enter")
    page.locator("#inside-pass").get_by_text("uncond", exact=True).click()
    wait_heatmap(page, "inside-attention", "head 3, uncond pass")
    page.screenshot(path=str(SHOTS / "inside.png"), full_page=True)
    page.get_by_label("Layers (empty = all)").fill("1")
    page.get_by_role("button", name="Run patching sweep").click()
    page.get_by_text("Done — 2 patched runs").wait_for()
    wait_heatmap(page, "inside-patching", "target_logprob after patching")
    page.locator("#inside-patching").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "inside_patching.png"), full_page=True)
    corrupted = page.get_by_label("Corrupted prompt (activations patched into)")
    corrupted.fill("a small animal that")
    page.get_by_role("button", name="Run patching sweep").click()
    page.get_by_text("must fill the same number of context latents").first.wait_for()
    corrupted.fill("the dog sat on")


def test_inside_stop_ends_a_long_run(page, monkeypatch):
    """The sampler is held in block 1 until the Stop click has set the run's stop flag."""
    stopped, held = stop_signal(page.ctx, monkeypatch), threading.Event()
    open_tab(page, "Inside")
    tokens = shown(page, "number input for Max new tokens")
    tokens.fill("64")
    tokens.press("Enter")
    with page.ctx.workbench.hooks(post_update=hold_at(1, 0, stopped, held)):
        page.get_by_role("button", name="Run and cache").click()
        wait_event(page, held, "the sampler never reached the held step")
        page.get_by_role("button", name="Stop", exact=True).filter(visible=True).click()
        wait_event(page, stopped, "the Stop click never reached the running run")
        page.get_by_text("Stopped by the user: showing the 1 finished block(s).").wait_for()
    wait_heatmap(page, "inside-attention", "Attention")


def test_nothing_was_fetched_from_outside(page):
    assert page.external == []


# -- trustworthy numbers, on the pocket checkpoint --------------------------------------------------------------
def test_pocket_trajectory_marks_the_end_and_flags_off_manifold_blocks(pocket_page):
    pg = pocket_page
    open_tab(pg, "Trajectories")
    tokens = shown(pg, "number input for Max new tokens")
    tokens.fill("12")
    tokens.press("Enter")
    pg.get_by_text("Noise sample id, token sampling, EOS").click()
    pg.get_by_label("Stop at EOS").uncheck()                      # every block runs: blocks past the EOS are marked
    pg.get_by_role("button", name="Generate").click()
    pg.get_by_text("Finished").wait_for()
    text = pg.get_by_label("Prompt + generated text").input_value()
    assert text.endswith("⟨eos⟩") and "<|" not in text
    pg.get_by_text("ran on past it").wait_for()
    pg.get_by_text("Off-manifold").first.wait_for()
    wait_plots(pg, 3)
    dit = json.loads((default_checkpoint() / "cola_dlm" / "cola_dit" / "config.json").read_text())
    bars = pg.locator("#trajectory-monitor .barlayer .trace").first.locator(".point").count()
    assert bars == -(-12 // dit["block_size"])                                                # a bar a block
    pg.locator("#trajectory-monitor").scroll_into_view_if_needed()
    pg.screenshot(path=str(SHOTS / "trajectories_numbers.png"), full_page=True)


def test_pocket_guidance_lab_flags_cells_and_shows_population_metrics(pocket_page):
    pg = pocket_page
    open_tab(pg, "Guidance lab")
    shown(pg, "X: guidance values").fill("1, 4, 7")
    pg.get_by_label("seed", exact=True).check()
    shown(pg, "Y values").fill("0, 1, 2")
    tokens = shown(pg, "number input for Max new tokens")
    tokens.fill("10")
    tokens.press("Enter")
    pg.get_by_role("button", name="Run grid").click()
    pg.get_by_text("Done").wait_for()
    assert pg.locator(".cola-grid td .gen").count() == 18          # 3 guidance x 3 seeds x 2 prompts
    assert pg.locator(".cola-grid .flag").count() >= 1 and "<|" not in pg.locator(".cola-grid").inner_text()
    pg.locator("#guidance-monitor .js-plotly-plot .main-svg").first.wait_for()
    assert pg.get_by_text("self_bleu").count() >= 1
    pg.screenshot(path=str(SHOTS / "guidance_lab_numbers.png"), full_page=True)


def test_pocket_latent_lab_round_trip_and_inversion(pocket_page):
    pg = pocket_page
    open_tab(pg, "Latent lab")
    pg.get_by_role("button", name="Encode A and B").click()
    pg.get_by_text('"token_accuracy": 1').first.wait_for()
    assert pg.get_by_text('"decoded": "a small domesticated animal kept as a pet"').count() == 1
    pg.get_by_role("tab", name="Inversion round trip").click()
    pg.get_by_role("button", name="Invert and regenerate").click()
    pg.get_by_text('"relative_error_held"').wait_for()
    pg.get_by_text("Round-trip error per block").wait_for()
    pg.screenshot(path=str(SHOTS / "latent_lab_numbers.png"), full_page=True)


def test_pocket_diagnostics_show_units_and_the_likelihood_with_its_error(pocket_page):
    pg = pocket_page
    open_tab(pg, "Diagnostics")
    pg.get_by_label("ODE log-likelihood (slow)").check()
    pg.get_by_role("button", name="Diagnose").click()
    pg.get_by_text("prior log-likelihood (posterior draws)").wait_for()
    assert pg.get_by_text("bits/dim (divergence estimate; 0 when exact), ODE error").count() == 1
    pg.get_by_text("Informative units:").wait_for()
    pg.screenshot(path=str(SHOTS / "diagnostics_numbers.png"), full_page=True)


def test_chat_tab_streams_the_denoising_block_and_opens_the_answer(pocket_page):
    """pocket-chat answers while the test holds its sampler in block 1: the live view shows coloured x0 tokens."""
    page = pocket_page
    held, release = threading.Event(), threading.Event()
    open_tab(page, "Chat")
    page.get_by_text("User:/Assistant: turns").wait_for()                 # pocket-chat's text template
    box = page.get_by_label("Message", exact=True)
    box.fill("What does 'river' mean?")
    with page.ctx.chat_workbench.hooks(post_update=hold_at(1, 3, release, held)):
        box.press("Enter")
        wait_event(page, held, "the sampler never reached the held step")
        page.locator("#cola-chat-live .tok").first.wait_for()          # the block's tokens, coloured, while it runs
        assert "background:hsl(" in page.locator("#cola-chat-live .tok").first.get_attribute("style")
        page.get_by_text("Block 2 · step").wait_for()                    # the held block (index 1)
        page.screenshot(path=str(SHOTS / "chat_live.png"), full_page=True)
        release.set()
    page.get_by_text("Answered").wait_for()
    answer = page.locator("#cola-chat-conversation .message-row").last.inner_text()
    assert any(c.isalpha() for c in answer)
    page.screenshot(path=str(SHOTS / "chat.png"), full_page=True)
    box.fill("   ")
    box.press("Enter")
    page.get_by_text("message is empty; type some text").first.wait_for()
    page.get_by_role("button", name="Open last answer in Trajectories").click()
    page.get_by_text("The re-run reproduces the answer's").wait_for()
    assert page.get_by_role("tab", name="Trajectories").get_attribute("aria-selected") == "true"
    assert page.get_by_label("Prompt", exact=True).input_value().startswith("User: What does 'river' mean?")
    wait_plots(page, 2)
    page.screenshot(path=str(SHOTS / "chat_opened.png"), full_page=True)


def test_chat_stop_keeps_what_was_said(pocket_page, monkeypatch):
    page = pocket_page
    stopped, held = stop_signal(page.ctx, monkeypatch), threading.Event()
    open_tab(page, "Chat")
    box = page.get_by_label("Message", exact=True)
    box.fill("tell me more")
    stop = page.get_by_role("button", name="Stop", exact=True).filter(visible=True)
    where = stop.bounding_box()
    with page.ctx.chat_workbench.hooks(post_update=hold_at(1, 0, stopped, held)):
        box.press("Enter")
        wait_event(page, held, "the sampler never reached the held step")
        page.get_by_text("Answering", exact=True).filter(visible=True).first.wait_for()
        assert stop.bounding_box() == where       # the live view's height is fixed: Stop stays under the cursor
        stop.click()
        wait_event(page, stopped, "the Stop click never reached the running answer")
        page.get_by_text("Stopped", exact=True).filter(visible=True).first.wait_for()
    page.get_by_role("button", name="New conversation").click()
    page.get_by_text("New conversation.").wait_for()


def test_pocket_page_fetched_nothing_from_outside(pocket_page):
    assert pocket_page.external == []
