"""TRuST web app. For now: generate images with per-token cross-attention heat maps.

    python app.py    # serves on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (default 127.0.0.1:7860)
"""

import gradio as gr

from trust.errors import TrustError
from trust.service import ModelService

service = ModelService("shapes")  # loads the model on first use, not at import


def on_generate(prompt: str, num_images: float, seed: float, steps: float):
    try:
        panels = service.generate_panels(prompt, int(num_images), int(seed), int(steps))
    except (TrustError, ValueError) as err:
        raise gr.Error(str(err)) from err
    return panels.images, panels.heat_maps


with gr.Blocks(title="TRuST: concept erasure you can see") as demo:
    gr.Markdown("# TRuST\nGenerate with the embedded ShapesWorld model and see which pixels read which word.")
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", value="a red circle on a striped background", scale=4)
        generate_btn = gr.Button("Generate", variant="primary", scale=1)
    with gr.Row():
        num_images = gr.Slider(1, 8, value=4, step=1, label="Images")
        seed = gr.Number(value=0, precision=0, label="Seed")
        steps = gr.Slider(5, 50, value=25, step=1, label="DDIM steps")
    images = gr.Gallery(label="Samples (the detector's verdict in each caption)", columns=4, height="auto")
    gr.Markdown("Cross-attention heat maps of the first sample: how strongly each pixel attends to each token.")
    heat_maps = gr.Gallery(label="Per-token heat maps", columns=8, height="auto")
    gr.on([generate_btn.click, prompt.submit], on_generate, [prompt, num_images, seed, steps], [images, heat_maps])

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=2).launch()
