"""kdapp Gradio app: Hugging Face Space entry point (`python app.py` works too).

GRADIO_SERVER_PORT (default 7860) and GRADIO_SERVER_NAME (default 127.0.0.1; 0.0.0.0 on a Space) are read by launch().
On a public Space set KDAPP_ADMIN_PASSWORD: starting training and benchmarks then needs it.
"""
import kdapp  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch is imported)
from kdapp.ui import build_app, launch_kwargs, queue_app

demo = build_app()  # module-level `demo` so `gradio app.py` reload mode finds it

if __name__ == "__main__":
    queue_app(demo).launch(**launch_kwargs())  # limits from KDAPP_* env vars: see kdapp/ui/safety.py and README
