# The moodwatch image: every service (watcher, worker, beat, web) runs from it with another command.
# BASE: any image with Python 3.11 and its venv module (the wheels pinned are built for 3.11);
# where no registry is reachable, a local one (benchmarks/compose_run.sh makes one of Debian's).
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 \
    MOODWATCH_DATA_DIR=/srv/moodwatch/data MOODWATCH_MODEL_DIR=/srv/moodwatch/models

WORKDIR /app
# A virtualenv: a Debian base's own Python refuses system-wide pip installs (PEP 668).
RUN python3 -m venv /opt/moodwatch/venv
ENV PATH=/opt/moodwatch/venv/bin:$PATH
# The pinned dependencies first, in a layer of their own (about 2 GB): a change to the code or
# the README then rebuilds in seconds instead of reinstalling TensorFlow.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY moodwatch ./moodwatch
COPY moodwatch_app ./moodwatch_app
COPY worker ./worker
COPY trainer ./trainer
COPY watcher ./watcher
COPY db ./db
COPY web ./web
RUN pip install --no-cache-dir --no-deps .
# The face detector's model files live beside the code, not in the models volume.
COPY models/detector /opt/moodwatch/detector
ENV MOODWATCH_DETECTOR_DIR=/opt/moodwatch/detector

# The shipped model seeds the models volume the first time it is created: only the current
# shipped version (models/shipped.json names it; tests/test_compose.py holds the two together),
# never a version trained on the building machine. Those, the user's `current` and runs.jsonl
# live in the user registry, /srv/moodwatch/data/models on the data volume.
COPY models/README.md models/shipped.json models/face-fer2013.keras \
     models/face-fer2013.provenance.txt /srv/moodwatch/models/
COPY models/v20261202T015945750687-colour-blind-160-faces /srv/moodwatch/models/v20261202T015945750687-colour-blind-160-faces
# The pointer from shipped.json, not the building clone's models/current (an old release wrote it).
RUN python -c "import json, pathlib; m = pathlib.Path('/srv/moodwatch/models'); \
(m / 'current').write_text(json.loads((m / 'shipped.json').read_text())['current'] + '\n')"
RUN useradd --create-home --uid 1000 moodwatch \
    && mkdir -p /srv/moodwatch/data/inbox \
    && chown -R moodwatch /srv/moodwatch
USER moodwatch
CMD ["moodwatch", "--help"]
