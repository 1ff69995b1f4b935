# The moodwatch image: every service (watcher, worker, beat, web) runs from it with another command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 \
    MOODWATCH_DATA_DIR=/srv/moodwatch/data MOODWATCH_MODEL_DIR=/srv/moodwatch/models

WORKDIR /app
COPY pyproject.toml README.md ./
COPY moodwatch ./moodwatch
COPY moodwatch_app ./moodwatch_app
COPY worker ./worker
COPY trainer ./trainer
COPY watcher ./watcher
COPY db ./db
COPY web ./web
RUN pip install --no-cache-dir .
# The face detector's model files live beside the code, not in the models volume.
COPY models/detector /opt/moodwatch/detector
ENV MOODWATCH_DETECTOR_DIR=/opt/moodwatch/detector

# The shipped model seeds the models volume the first time it is created.
COPY models /srv/moodwatch/models
RUN useradd --create-home --uid 1000 moodwatch \
    && mkdir -p /srv/moodwatch/data/inbox \
    && chown -R moodwatch /srv/moodwatch
USER moodwatch
CMD ["moodwatch", "--help"]
