"""A Flask app for forkd.gunicorn's integration tests: Flask sets Content-Length itself, as most
WSGI frameworks do (a server that adds its own made Node's http client and wrk fail).

GET /        "flask worker=<FORKD_WORKER> pid=<pid> generation=<FORKD_GENERATION>"
GET /slow?ms=N   the same after N milliseconds
"""
import os
import time

from flask import Flask, request

app = Flask(__name__)


@app.route("/")
@app.route("/slow")
def index():
    if request.path == "/slow":
        time.sleep(int(request.args.get("ms", "0")) / 1000)
    return "flask worker=%s pid=%d generation=%s\n" % (
        os.environ.get("FORKD_WORKER"), os.getpid(), os.environ.get("FORKD_GENERATION")), \
        200, {"Content-Type": "text/plain"}
