"""The processor's HTTP surface: `POST /v1/jobs` and `GET /_status`.

A job request reads one configuration snapshot (maintenance, the revision it answers
with), then waits for its job on the pool. `/_status` takes no lock a job holds, so it
answers while every worker is busy.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

import flask

import config_watch
from config_watch import MAINTENANCE_MODE, THREADS, ConfigRuntime, ConfigUnavailable, Snapshot

from .jobs import fingerprint
from .pool import PoolClosed, QueueFull, ResizablePool, RunInfo
from .settings import ProcessorSettings

log = logging.getLogger(__name__)

# Seconds a client is told to wait when the processor is paused, full or draining.
MAINTENANCE_RETRY_AFTER = 60
QUEUE_FULL_RETRY_AFTER = 1
DRAINING_RETRY_AFTER = 5
# Bounds of the `rounds` query parameter.
MIN_ROUNDS, MAX_ROUNDS = 1, 1000


def _json(body: dict, status: int, headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json",
                          headers=list((headers or {}).items()))


class Processor:
    """The running service: its settings, configuration runtime and job pool."""

    def __init__(self, settings: ProcessorSettings, runtime: ConfigRuntime, pool: ResizablePool) -> None:
        self.settings = settings
        self.runtime = runtime
        self.pool = pool
        self.draining = False
        self._unsubscribe = runtime.watcher.store.subscribe(self._on_snapshot)

    @classmethod
    def start(cls, settings: ProcessorSettings, config: config_watch.Settings) -> "Processor":
        """Start the watcher, wait (boundedly) for the first list, start the pool at its size."""
        runtime = ConfigRuntime(config).start()
        if not runtime.watcher.wait_synced(config.initial_wait):
            log.warning("no configuration from etcd within %.2fs of start; the pool starts at the default size",
                        config.initial_wait, extra={"json_fields": {"endpoints": [str(e) for e in config.endpoints]}})
        snapshot = runtime.watcher.store.current
        pool = ResizablePool(snapshot[THREADS], settings.queue_limit)
        pool.resize(snapshot[THREADS], snapshot.revision)
        log.info("processor started", extra={"json_fields": {
            "revision": snapshot.revision, "threads": snapshot[THREADS], "queue_limit": settings.queue_limit,
            "max_body_bytes": settings.max_body_bytes, "auth": bool(settings.token)}})
        return cls(settings, runtime, pool)

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        # Runs on the store's one notifier thread, for each newest published snapshot.
        threads = snapshot[THREADS]
        before = self.pool.resize(threads, snapshot.revision)
        if before != threads:
            log.info("pool resized from %d to %d threads at revision %d", before, threads, snapshot.revision,
                     extra={"json_fields": {"key": THREADS, "revision": snapshot.revision,
                                            "from": before, "to": threads}})

    def begin_drain(self) -> None:
        """Refuse new jobs from now on; the ones accepted still run."""
        if not self.draining:
            self.draining = True
            stats = self.pool.stats()
            log.info("draining: no new jobs; finishing %d running and %d queued", stats["busy"], stats["queued"],
                     extra={"json_fields": {"busy": stats["busy"], "queued": stats["queued"]}})

    def stop(self, timeout: float) -> bool:
        """Finish every accepted job (within `timeout`), then stop the pool and the watcher."""
        self.draining = True
        finished = self.pool.shutdown(timeout)
        stats = self.pool.stats()
        if finished:
            log.info("drained: every accepted job finished", extra={"json_fields": stats})
        else:
            log.error("drain timed out after %.1fs with jobs unfinished", timeout, extra={"json_fields": stats})
        self._unsubscribe()
        self.runtime.stop()
        return finished

    # --- HTTP ---------------------------------------------------------------------

    def authorized(self, request: flask.Request) -> bool:
        token = self.settings.token
        if token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest: the time taken does not depend on where a guess goes wrong.
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    def status(self) -> flask.Response:
        body = self.runtime.status_json()  # addresses and error text only with STATUS_DETAILS=true
        body["pool"] = self.pool.stats()
        body["draining"] = self.draining
        return _json(body, 200, {"Cache-Control": "no-store"})

    def job(self, request: flask.Request) -> flask.Response:
        raw_rounds = request.args.get("rounds", str(MIN_ROUNDS))
        if not (raw_rounds.isascii() and raw_rounds.isdigit() and len(raw_rounds) <= 4
                and MIN_ROUNDS <= int(raw_rounds) <= MAX_ROUNDS):
            return _json({"error": f"rounds must be an integer from {MIN_ROUNDS} to {MAX_ROUNDS}",
                          "rounds": raw_rounds[:16]}, 400)
        rounds = int(raw_rounds)
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _json({"error": f"body larger than {limit} bytes"}, 413, {"Connection": "close"})

        try:
            snapshot = self.runtime.snapshot()  # the one snapshot this request uses
        except ConfigUnavailable as exc:  # never synced, and etcd refuses us: no job on made-up settings
            log.error("processor misconfigured: %s", exc.reason)
            return _json({"error": f"processor misconfigured: {exc.reason}"}, 503,
                         {"Retry-After": str(MAINTENANCE_RETRY_AFTER)})
        headers = {"X-Config-Revision": str(snapshot.revision), "Cache-Control": "no-store"}
        if snapshot[MAINTENANCE_MODE]:
            headers["Retry-After"] = str(MAINTENANCE_RETRY_AFTER)
            return _json({"error": "maintenance", "revision": snapshot.revision}, 503, headers)
        if self.draining:
            headers["Retry-After"] = str(DRAINING_RETRY_AFTER)
            return _json({"error": "shutting down", "revision": snapshot.revision}, 503, headers)

        body = request.stream.read(limit + 1)  # chunked bodies have no Content-Length
        if len(body) > limit:
            return _json({"error": f"body larger than {limit} bytes"}, 413, {**headers, "Connection": "close"})

        def run(info: RunInfo) -> tuple[RunInfo, dict, float]:
            started = time.perf_counter()
            result = fingerprint(body, rounds)
            return info, result, time.perf_counter() - started

        try:
            future = self.pool.submit(run)
        except QueueFull:
            headers["Retry-After"] = str(QUEUE_FULL_RETRY_AFTER)
            return _json({"error": "job queue full", "queue_limit": self.pool.queue_limit}, 503, headers)
        except PoolClosed:
            headers["Retry-After"] = str(DRAINING_RETRY_AFTER)
            return _json({"error": "shutting down", "revision": snapshot.revision}, 503, headers)
        try:
            info, result, seconds = future.result()
        except Exception as exc:  # logged by the pool; the caller gets a clean 500
            return _json({"error": "job failed", "detail": type(exc).__name__}, 500, headers)
        return _json({"result": result, "threads": info.threads, "threads_revision": info.revision,
                      "revision": snapshot.revision, "queued_ms": round(info.queued_seconds * 1000, 3),
                      "run_ms": round(seconds * 1000, 3)}, 200, headers)


def create_app(processor: Processor) -> flask.Flask:
    app = flask.Flask("processor")

    @app.before_request
    def _authenticate():
        # /_status is open: it holds no secret (no token, no etcd credentials), and
        # health checks must read it without one. Everything else needs the token.
        if flask.request.path != "/_status" and not processor.authorized(flask.request):
            return _json({"error": "unauthorized"}, 401, {"WWW-Authenticate": 'Bearer realm="processor"'})
        return None

    @app.get("/_status")
    def _status():
        return processor.status()

    @app.post("/v1/jobs")
    def _jobs():
        return processor.job(flask.request)

    @app.errorhandler(404)
    def _not_found(_err):
        return _json({"error": "not found"}, 404)

    @app.errorhandler(405)
    def _not_allowed(err):
        return _json({"error": "method not allowed"}, 405, {"Allow": ", ".join(err.valid_methods or ())})

    return app
