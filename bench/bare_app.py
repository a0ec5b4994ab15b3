"""The baseline: a bare Flask app under the same gunicorn settings as mlapi.

bench.py serves it with mlapi's own gunicorn.conf.py (same worker class, threads,
workers, keep-alive, max_requests and JSON access logger), so the ratio
mlapi/bare measures what mlapi adds on top of Flask + gunicorn.

Its routes have mlapi's paths, and it puts the matched route in the WSGI environ
the way mlapi does, so the shared access logger treats both alike: the GET line
is skipped like mlapi's quiet /health/live, the POST line is written like
mlapi's /v1/predict. Nothing else: no auth, validation, limits or metrics.
"""

from flask import Flask, request

app = Flask(__name__)


@app.get("/health/live")
def constant_get():
    return {"status": "alive"}


@app.post("/v1/predict")
def constant_post():
    request.get_json()  # read and parse the body, as mlapi must
    return {"version": "1.0", "prediction": 2.5, "method": "average"}


@app.after_request
def mark_route(response):
    rule = request.url_rule
    request.environ["mlapi.route"] = rule.rule if rule is not None else "<unmatched>"
    return response
