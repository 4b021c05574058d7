"""The Gradio demo: `demo.app.build_app(runtime)` builds it, `zoo demo` serves it.

`demo.handlers` holds what each button does as plain functions of a `Runtime` (no gradio import), so tests
and scripts can call them without a browser. Nothing is imported or started here.
"""
