"""kdapp Gradio app: Hugging Face Space entry point (`python app.py` works too).

GRADIO_SERVER_PORT (default 7860) and GRADIO_SERVER_NAME (default 127.0.0.1; 0.0.0.0 on a Space) are read by launch().
"""
import kdapp  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch is imported)
from kdapp.ui import build_app

demo = build_app()  # module-level `demo` so `gradio app.py` reload mode finds it

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=2).launch()
