# A Hugging Face Space (Docker SDK) serving the TRuST app on port 7860.
FROM python:3.11-slim

RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH \
    GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7860 PYTHONUNBUFFERED=1
WORKDIR /home/user/app

RUN pip install --no-cache-dir --user torch==2.14.1 torchvision==0.29.1 && \
    pip install --no-cache-dir --user diffusers==0.42.1 transformers==5.24.0 gradio==6.31.0 \
        accelerate==1.15.0 safetensors==0.8.0 matplotlib==3.11.2 open_clip_torch==3.3.0 \
        huggingface_hub==2.4.0 tqdm==4.70.1 pillow==12.3.0
COPY --chown=user . .
RUN pip install --no-cache-dir --user --no-deps -e .

EXPOSE 7860
CMD ["python", "app.py"]
