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

# The shipped model seeds the models volume the first time it is created: only the current
# shipped version (models/shipped.json names it; tests/test_compose.py holds the two together),
# never a version trained on the building machine. Those, the user's `current` and runs.jsonl
# live in the user registry, /srv/moodwatch/data/models on the data volume.
COPY models/README.md models/shipped.json models/face-fer2013.keras \
     models/face-fer2013.provenance.txt /srv/moodwatch/models/
COPY models/v20261129T174400800611-default-faces /srv/moodwatch/models/v20261129T174400800611-default-faces
# The pointer from shipped.json, not the building clone's models/current (an old release wrote it).
RUN python -c "import json, pathlib; m = pathlib.Path('/srv/moodwatch/models'); \
(m / 'current').write_text(json.loads((m / 'shipped.json').read_text())['current'] + '\n')"
RUN useradd --create-home --uid 1000 moodwatch \
    && mkdir -p /srv/moodwatch/data/inbox \
    && chown -R moodwatch /srv/moodwatch
USER moodwatch
CMD ["moodwatch", "--help"]
