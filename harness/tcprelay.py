"""A TCP relay on 127.0.0.1 in front of a server (PostgreSQL in the tests), which can cut
chosen connections the way a network path does when it black-holes them: bytes stop
flowing both ways and nobody closes anything. Its own kernel still answers TCP (keepalive
probes included), as a TCP proxy's (HAProxy, a cloud load balancer) does when the path
behind it goes dark: only a round trip through it shows the cut.

Test code only (threads, one pair of pumps per connection); not a product component."""

from __future__ import annotations

import select
import socket
import threading
import time

__all__ = ["TcpRelay"]


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket, cut: bool) -> None:
        self.client = client
        self.upstream = upstream
        self.cut = cut
        self.upstream_port = int(upstream.getsockname()[1])

    def close(self) -> None:
        for s in (self.client, self.upstream):
            try:
                s.close()
            except OSError:  # pragma: no cover
                pass


class TcpRelay:
    """Forwards ``127.0.0.1:<port>`` to ``host:target`` until :meth:`close`.

    :meth:`black_hole` stops the connection whose upstream side has the local port given
    (PostgreSQL's ``pg_stat_activity.client_port``) and every connection opened after it,
    :meth:`black_hole_all` every connection, until :meth:`heal`: what was sent meanwhile
    waits in the kernels' buffers and flows on then, as after a path that came back."""

    def __init__(self, host: str, target: int) -> None:
        self._target = (host, target)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._cut_new = False
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="tcprelay-accept").start()

    def via(self, url: str) -> str:
        """``url`` (a ``postgresql://`` URL to ``127.0.0.1:<target>``) through the relay."""
        host, port = self._target
        out = url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}")
        if out == url:
            raise ValueError("the URL does not name the relay's target")
        return out

    def black_hole(self, upstream_port: int) -> None:
        with self._lock:
            found = [p for p in self._pairs if p.upstream_port == upstream_port]
            if not found:
                raise LookupError(f"no relayed connection from local port {upstream_port}")
            for p in found:
                p.cut = True
            self._cut_new = True

    def black_hole_all(self) -> int:
        """Stop every relayed connection and every one opened after this, until
        :meth:`heal`: the whole path gone dark (a partition, a frozen load balancer).
        Returns how many connections were cut."""
        with self._lock:
            for p in self._pairs:
                p.cut = True
            self._cut_new = True
            return len(self._pairs)

    def heal_new(self) -> None:
        """Let connections opened from now on through, leaving the cut ones dark: a load
        balancer replaced by a new one while the old one's connections stay open."""
        with self._lock:
            self._cut_new = False

    def heal(self) -> None:
        with self._lock:
            self._cut_new = False
            for p in self._pairs:
                p.cut = False

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for p in pairs:
            p.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                pair = _Pair(client, upstream, self._cut_new)
                self._pairs.append(pair)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(pair, src, dst), daemon=True, name="tcprelay-pump"
                ).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed.is_set():
            if pair.cut:
                time.sleep(0.05)
                continue
            try:
                readable, _, _ = select.select([src], [], [], 0.1)
                if not readable:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            except (OSError, ValueError):
                break
        pair.close()
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
