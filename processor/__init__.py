"""The data processor: compute jobs on a pool whose size follows etcd live.

`python -m processor` serves it with gunicorn (one worker process). Its settings are
in `processor.settings`; the etcd side is config_watch's, with CONFIG_SERVICE
`data-processor`.
"""

from .app import Processor, create_app
from .pool import PoolClosed, QueueFull, ResizablePool, RunInfo
from .settings import SERVICE, ProcessorSettings

__all__ = ["PoolClosed", "Processor", "ProcessorSettings", "QueueFull", "ResizablePool", "RunInfo", "SERVICE",
           "create_app"]
