"""`python -m processor`: the data processor under gunicorn, one worker process.

One process, because the pool size is a per-process live setting: with one process,
`/config/services/data-processor/threads` is exactly the number of jobs that run at
once on the machine. The parallelism comes from the pool's threads, whose heavy work
(hashlib, zlib) releases the GIL. gunicorn's own threads (gthread) only carry requests:
there are enough of them for every job the pool can hold running or queued, plus a
few, so `/_status` and fast refusals (401, 413, 503) never wait behind jobs.

Nothing starts in the gunicorn master: the watcher (a gRPC channel and threads) and
the pool start in the worker, after the fork, when gunicorn loads the app.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

import config_watch
from config_watch import SCHEMA, THREADS

from .app import Processor, create_app
from .settings import SERVICE, ProcessorSettings

# Named for the package: run with -m, this module is "__main__".
log = logging.getLogger("processor")

# gunicorn threads beyond the most jobs the pool can hold: /_status and refusals.
_SPARE_REQUEST_THREADS = 16
# Seconds an idle keep-alive connection (the gateway's) stays open.
_KEEPALIVE_SECONDS = 15


class _StructuredGunicornLogger(GunicornLogger):
    """gunicorn's error log through the root handler, so its lines are JSON like ours."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True


class _Server(BaseApplication):
    def __init__(self, settings: ProcessorSettings, config: config_watch.Settings) -> None:
        self.settings = settings
        self.config = config
        self.processor: Processor | None = None
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        max_jobs = SCHEMA.spec_for(THREADS).maximum + s.queue_limit
        options = {
            "bind": [f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"],
            "workers": 1,
            "worker_class": "gthread",
            "threads": max_jobs + _SPARE_REQUEST_THREADS,
            "worker_connections": max_jobs + 4 * _SPARE_REQUEST_THREADS,
            "keepalive": _KEEPALIVE_SECONDS,
            # The master waits this long for the worker's drain before killing it.
            "graceful_timeout": s.drain_seconds,
            "proc_name": "processor",
            # The control socket's default path is one per user: two servers would fight over it.
            "control_socket_disable": True,
            "logger_class": _StructuredGunicornLogger,
            "loglevel": self.config.log_level.lower(),
            "post_worker_init": self._post_worker_init,
            "worker_exit": self._worker_exit,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        # In the worker, after the fork: the watcher and the pool start here.
        self.processor = Processor.start(self.settings, self.config)
        app = create_app(self.processor)
        # All of this lives as long as the worker: frozen, a full collection no longer
        # walks it (14-38 ms a time, measured).
        gc.freeze()
        return app

    def _post_worker_init(self, worker) -> None:
        # gunicorn's SIGTERM handler stops accepting; ours also refuses a job that
        # slips in meanwhile, and logs what is left to drain.
        gunicorn_handler = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):
            if self.processor is not None:
                self.processor.begin_drain()
            gunicorn_handler(signum, frame)

        signal.signal(signal.SIGTERM, on_term)

    def _worker_exit(self, server, worker) -> None:
        # gunicorn has answered every request it could within the grace period, so
        # the pool is normally empty here; a job left over is logged, not waited for
        # past the master's deadline.
        if self.processor is not None:
            self.processor.stop(timeout=1.0)


def main() -> int:
    env = dict(os.environ)
    env.setdefault("CONFIG_SERVICE", SERVICE)
    try:
        settings = ProcessorSettings.from_env(env)
        config = config_watch.Settings.from_env(env)
    except config_watch.SettingsError as exc:
        print(f"processor: {exc}", file=sys.stderr)
        return 2
    config_watch.configure_logging(config.log_level)
    log.info("processor starting", extra={"json_fields": {
        "port": settings.port, "host": settings.host, "service": config.service,
        "endpoints": [str(e) for e in config.endpoints], "drain_seconds": settings.drain_seconds}})
    _Server(settings, config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
