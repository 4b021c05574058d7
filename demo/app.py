"""The Gradio app over a zoo: auto-routing, a hand-picked adapter, on-the-fly blends, and the zoo itself.

`build_app(runtime)` only builds the page; `serve(app, ...)` (called by `zoo demo` and the tests) starts it.
Every event that touches the model shares one queue slot (`concurrency_id="model"`), so concurrent visitors
wait their turn instead of colliding on the shared PeftModel; the runtime's lock guards direct callers too.

Visitors may be strangers (`zoo demo --host 0.0.0.0`): prompts are capped before tokenizing, the queue is
bounded, a login can be required (`serve(auth=...)`), and errors reach the page as short text with no paths or
exception details (those go to the server's log).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from demo.examples import EXAMPLES
from demo.handlers import (MAX_PROMPT_CHARS, ZOO_COLUMNS, Blender, auto_answer, blend_answer, blendable,
                           manual_answer, router_problem, zoo_plots, zoo_rows, zoo_summary)
from zoo.errors import ZooError, printable

TITLE = "Adapter Zoo"
INTRO = ("# Adapter Zoo\n"
         "One small base model, many task adapters (QLoRA) that plug into it. A router reads each request and "
         "picks the adapter that fits, or none, and you see the answer next to the plain base model's.")
CSS = """
.gradio-container {max-width: 1180px !important; margin: auto;}
#zoo-summary {font-size: 0.92em; opacity: 0.85;}
.timing {font-size: 0.85em; opacity: 0.75; min-height: 1.4em;}
"""
MODEL = dict(concurrency_id="model", concurrency_limit=1)  # one generation at a time on the shared model
GENERIC_ERROR = "something went wrong on the server while answering; try again (the details are in its log)"
_PATH = re.compile(r"(?<![\w.~])(?:~|[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])+([^\s'\"/\\]+)")
log = logging.getLogger("zoo.demo")


@dataclass(frozen=True)
class Limits:
    """What one visitor may ask of the shared server."""

    prompt_chars: int = field(default=MAX_PROMPT_CHARS, metadata={"help": "longest prompt, checked before tokenizing"})
    queue_size: int = field(default=64, metadata={"help": "requests waiting at once; more are turned away"})


def build_app(runtime, limits: Limits = Limits()):
    """The demo page for a `Runtime` whose adapters are loaded (or load on first use)."""
    import gradio as gr

    router_error = router_problem(runtime)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(INTRO)
        gr.Markdown(zoo_summary(runtime, router_error), elem_id="zoo-summary")
        with gr.Tabs():
            with gr.Tab("Auto-route", id="auto"):
                _auto_tab(gr, runtime, router_error, limits)
            with gr.Tab("Pick an adapter", id="manual"):
                _manual_tab(gr, runtime, limits)
            with gr.Tab("Blend adapters", id="blend"):
                _blend_tab(gr, runtime, limits)
            with gr.Tab("The zoo", id="zoo"):
                _zoo_tab(gr, app, runtime)
    app.queue(default_concurrency_limit=1, max_size=limits.queue_size)
    return app


def serve(app, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, block: bool = True,
          reports_dir=None, auth: tuple[str, str] | None = None):
    """Start the server (blocking unless `block=False`); returns Gradio's `(app, local_url, share_url)`.
    `auth` (user, password) makes every page and endpoint ask for a login first. `show_error=False`: only our
    own short messages (`gr.Error`) reach the page, never an exception's text."""
    import gradio as gr

    return app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                      theme=theme(gr), css=CSS, ssr_mode=False, auth=auth,
                      auth_message="This Adapter Zoo demo asks for the login its host gave you." if auth else None,
                      allowed_paths=[str(reports_dir)] if reports_dir else None, show_error=False, quiet=not block,
                      footer_links=["api", "gradio"])


def theme(gr):
    """Soft, with the system's fonts: the default Google fonts would be fetched from the internet."""
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky",
                          font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])


def _shown(gr, outputs):
    """Stream a handler's outputs to the page; a ZooError becomes one short message there (no 1 MB prompt
    echoed, no folder paths), anything else a generic line, its traceback in the server's log only."""
    try:
        yield from outputs
    except ZooError as e:
        raise gr.Error(for_visitors(str(e)), print_exception=False) from None
    except gr.Error:
        raise
    except Exception:
        log.exception("demo request failed")
        raise gr.Error(GENERIC_ERROR, print_exception=False) from None


def for_visitors(text: str) -> str:
    """A message fit for a stranger's page: printable, short, and every path cut to its last part."""
    return printable(_PATH.sub(r"…/\1", text), limit=300)


def _answer_pair(gr, label: str, prefix: str):
    """The answer under test and the plain base's, side by side, each with its timing line."""
    with gr.Row(equal_height=False):
        with gr.Column():
            answer = gr.Textbox(label=label, lines=6, max_lines=14, interactive=False, buttons=["copy"],
                                elem_id=f"{prefix}-answer")
            answer_time = gr.Markdown(elem_classes="timing", elem_id=f"{prefix}-answer-time")
        with gr.Column():
            base = gr.Textbox(label="Plain base model (no adapter)", lines=6, max_lines=14, interactive=False,
                              buttons=["copy"], elem_id=f"{prefix}-base")
            base_time = gr.Markdown(elem_classes="timing", elem_id=f"{prefix}-base-time")
    return [answer, answer_time, base, base_time]


def _tokens_slider(gr):
    return gr.Slider(0, 256, value=0, step=1, label="Max new tokens",
                     info="0 = the task's own length (sentiment: a word, QA: a short span, summary: a sentence or two)")


def _auto_tab(gr, runtime, router_error: str | None, limits: Limits):
    adapters = runtime.available()
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Your request", lines=7, max_lines=24, autofocus=True, elem_id="auto-prompt",
                                placeholder="Paste a review, a passage and a question, a dialogue… or ask anything.")
            if router_error:
                gr.Markdown(f"⚠️ **Routing is off:** {router_error}. Until then, pick the adapter below.")
            fallback = gr.Dropdown(adapters, value=adapters[0] if adapters else None, visible=bool(router_error),
                                   label="Adapter to use (no router)")
            with gr.Row():
                go = gr.Button("Route & answer", variant="primary", elem_id="auto-go")
                clear = gr.ClearButton(value="Clear")
            with gr.Accordion("Options", open=False):
                tokens = _tokens_slider(gr)
        with gr.Column(scale=2):
            route = gr.Textbox(label="Chosen route", interactive=False, elem_id="auto-route")
            probs = gr.Label(label="Router: probability of every route", show_heading=False, elem_id="auto-probs",
                             visible=not router_error)
    gr.Examples([[p] for _, p, _ in EXAMPLES], inputs=[prompt], example_labels=[lbl for lbl, _, _ in EXAMPLES],
                label="Examples: one per task, and requests no adapter serves")
    outputs = [route, probs, *_answer_pair(gr, "Routed answer", "auto")]
    clear.add([prompt, *outputs])

    def auto(prompt: str, fallback: str | None, tokens: float):
        """Route the prompt and stream the routed answer, then the base's."""
        yield from _shown(gr, auto_answer(runtime, prompt, fallback, tokens, limits.prompt_chars))

    gr.on([go.click, prompt.submit], auto, [prompt, fallback, tokens], outputs, api_name="auto", **MODEL)


def _manual_tab(gr, runtime, limits: Limits):
    adapters = runtime.available()
    gr.Markdown("Pick any adapter of the zoo (trained, or a saved combination) and compare it with the base.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Your request", lines=7, max_lines=24, elem_id="manual-prompt")
        with gr.Column(scale=2):
            # custom values reach the handler, which answers a wrong name with a short message (Gradio's own
            # check would echo the whole value back, 1 MB included)
            adapter = gr.Dropdown(adapters, value=adapters[0] if adapters else None, label="Adapter",
                                  elem_id="manual-adapter", allow_custom_value=True)
            tokens = _tokens_slider(gr)
            go = gr.Button("Answer", variant="primary", elem_id="manual-go")
    gr.Examples([[p] for _, p, _ in EXAMPLES], inputs=[prompt], example_labels=[lbl for lbl, _, _ in EXAMPLES])
    outputs = _answer_pair(gr, "Adapter's answer", "manual")

    def manual(adapter: str, prompt: str, tokens: float):
        """Stream the chosen adapter's answer, then the base's."""
        yield from _shown(gr, manual_answer(runtime, adapter, prompt, tokens, limits.prompt_chars))

    gr.on([go.click, prompt.submit], manual, [adapter, prompt, tokens], outputs, api_name="manual", **MODEL)


def _blend_tab(gr, runtime, limits: Limits):
    from zoo.combine import DENSITY_METHODS, METHODS

    names = blendable(runtime)
    gr.Markdown("Mix the task adapters with PEFT's `add_weighted_adapter`, as `zoo combine` does, but in memory: "
                "the blend is built when you ask, kept for reuse, never saved.")
    if len(names) < 2:
        gr.Markdown(f"Blending needs at least two trained adapters; this zoo has {len(names)}. "
                    "Train another with `zoo train TASK`.")
        return
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            sliders = [gr.Slider(-1, 2, value=1.0, step=0.05, label=f"weight of {n}", elem_id=f"blend-w-{n}")
                       for n in names]
            method = gr.Dropdown(list(METHODS), value="cat", label="Method", elem_id="blend-method",
                                 allow_custom_value=True)  # checked by the handler, like the adapter name
            about = gr.Markdown(f"*cat*: {METHODS['cat']}", elem_classes="timing")
            density = gr.Slider(0.05, 1, value=0.5, step=0.05, label="Density",
                                info="share of each adapter's weights kept by " + ", ".join(DENSITY_METHODS))
            tokens = _tokens_slider(gr)
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Your request", lines=7, max_lines=24, elem_id="blend-prompt")
            go = gr.Button("Blend & answer", variant="primary", elem_id="blend-go")
            info = gr.Markdown(elem_id="blend-recipe")
            answer = gr.Textbox(label="Blend's answer", lines=6, max_lines=14, interactive=False, buttons=["copy"],
                                elem_id="blend-answer")
            answer_time = gr.Markdown(elem_classes="timing")
    gr.Examples([[p] for _, p, _ in EXAMPLES], inputs=[prompt], example_labels=[lbl for lbl, _, _ in EXAMPLES])
    blender = Blender(runtime)

    def blend(method: str, density: float, prompt: str, tokens: float, *weights: float):
        """Build (or reuse) the weighted blend and stream its answer."""
        yield from _shown(gr, blend_answer(runtime, blender, dict(zip(names, weights)), method, density, prompt,
                                           tokens, limits.prompt_chars))

    method.change(lambda m: f"*{m}*: {METHODS.get(m, '')}", method, about, api_visibility="private", queue=False)
    gr.on([go.click, prompt.submit], blend, [method, density, prompt, tokens, *sliders], [info, answer, answer_time],
          api_name="blend", **MODEL)


def _zoo_tab(gr, app, runtime):
    with gr.Row(equal_height=True):
        gr.Markdown("Every adapter of the zoo: its task, base, size and training time, and how it scores against "
                    "the plain base on its task's validation data (`zoo eval`).")
        refresh = gr.Button("Refresh from disk", size="sm", scale=0, min_width=160)
    table = gr.Dataframe(zoo_rows(runtime.zoo), headers=ZOO_COLUMNS, interactive=False, wrap=True,
                         datatype=["str"] * 4 + ["number"] * 3 + ["str"] + ["number"] * 3 + ["str"],
                         column_widths=["12%", "12%", "7%", "12%", "5%", "7%", "8%", "9%", "7%", "7%", "6%", "8%"],
                         elem_id="zoo-table")
    refresh.click(lambda: zoo_rows(runtime.zoo), None, table, api_name="zoo")

    @gr.render(triggers=[app.load, refresh.click])
    def plots():
        """The report plots found on disk now, each at its own size (they are of different shapes)."""
        found = zoo_plots(runtime.zoo)
        if not found:
            gr.Markdown("No report plots yet: run `zoo eval` (or `make run`) to make them.")
        for path, caption in found:
            gr.Markdown(f"**{caption}**")
            gr.Image(path, show_label=False, interactive=False, buttons=["download", "fullscreen"],
                     elem_classes="zoo-plot")
