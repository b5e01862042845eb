"""A c2sp.org/tlog-witness witness: cosigning, durable state, polling, gossip.

* :mod:`client.witness.core`: the ``add-checkpoint`` checks and the status codes;
* :mod:`client.witness.store`: SQLite state, compare-and-swap, evidence;
* :mod:`client.witness.monitor`: polling logs and gossip / split-view detection;
* :mod:`client.witness.asgi`: the HTTP endpoints as a plain ASGI app;
* :mod:`client.witness.server`: that app on uvicorn, with timeouts and a connection limit;
* :mod:`client.witness.config` and :mod:`client.witness.cli`: ``tlog-witness``.

Like the rest of ``client/``, importing this never imports the log server (``tlog``),
Starlette, uvicorn or lmdb; only building a :class:`WitnessHTTPServer` loads uvicorn.
"""

from client.witness.core import Witness, WitnessedLog
from client.witness.monitor import Monitor, Peer
from client.witness.server import WitnessHTTPServer, start_server
from client.witness.store import Evidence, StoredCheckpoint, WitnessStore

__all__ = [
    "Evidence",
    "Monitor",
    "Peer",
    "StoredCheckpoint",
    "Witness",
    "WitnessHTTPServer",
    "WitnessStore",
    "WitnessedLog",
    "start_server",
]
