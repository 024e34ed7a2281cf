"""A TCP proxy on loopback that the test turns off and on: an unreachable service, on demand.

One thread runs a selector over the listening socket and every proxied pair.
:meth:`TcpProxy.disable` closes every open pair and refuses new connections
(accepted, then closed at once) until :meth:`TcpProxy.enable`;
:meth:`TcpProxy.drop` only closes the open pairs (a dropped connection the
client reconnects from). Commands are handed to the thread through a queue,
so only the thread touches sockets. :meth:`TcpProxy.watch` counts the
connections whose bytes, either way, contain a needle (the fault suite's canary
secret in a broker's traffic).
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import threading
from collections.abc import Callable
from types import TracebackType

_CHUNK = 65536


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; see the module docstring."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._enabled = True
        self._running = True
        self.connections = 0
        self.dropped = 0
        self._needle = b""
        self._tails: dict[socket.socket, bytes] = {}
        self._seen_in: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._run, name="faults-tcp-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> TcpProxy:
        """The proxy, running."""
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        """Stop it."""
        self.close()

    def _do(self, command: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                command()
            finally:
                done.set()

        self._commands.put(run)
        self._wake_w.send(b"x")
        if not done.wait(10):
            raise TimeoutError("the proxy thread did not answer within 10 s")

    def disable(self) -> None:
        """Close every open connection and refuse new ones until :meth:`enable`."""

        def command() -> None:
            self._enabled = False
            self._close_all()

        self._do(command)

    def enable(self) -> None:
        """Accept and forward connections again."""

        def command() -> None:
            self._enabled = True

        self._do(command)

    def drop(self) -> None:
        """Close every open connection; new ones are still forwarded."""
        self._do(self._close_all)

    def watch(self, needle: bytes) -> None:
        """From now on, look for ``needle`` in everything forwarded (see :attr:`sightings`)."""

        def command() -> None:
            self._needle = needle
            self._tails.clear()
            self._seen_in.clear()

        self._do(command)

    @property
    def sightings(self) -> int:
        """How many directions of connections carried the watched needle so far."""
        return len(self._seen_in)

    def close(self) -> None:
        """Stop the thread and close every socket."""
        if not self._running:
            return

        def command() -> None:
            self._running = False

        self._do(command)
        self._thread.join(10)
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def _close_all(self) -> None:
        for sock in list(self._peers):
            self._close_pair(sock)

    def _close_pair(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        if peer is not None:
            self._peers.pop(peer, None)
            self.dropped += 1
        for one in (sock, peer):
            if one is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(one)
            one.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if not self._enabled:
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self.connections += 1
        for sock in (client, upstream):
            sock.setblocking(True)
            sock.settimeout(10)
        self._peers[client] = upstream
        self._peers[upstream] = client
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(upstream, selectors.EVENT_READ)

    def _run(self) -> None:
        while self._running:
            for key, _ in self._selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif sock is self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(1024)
                    while not self._commands.empty():
                        self._commands.get()()
                elif sock in self._peers:
                    self._pump(sock)
        self._close_all()

    def _pump(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(_CHUNK)
            if data:
                if self._needle:
                    self._look(sock, data)
                self._peers[sock].sendall(data)
                return
        except OSError:
            pass
        self._close_pair(sock)

    def _look(self, sock: socket.socket, data: bytes) -> None:
        # Keep the end of what came before, so a needle split across reads is seen.
        window = self._tails.pop(sock, b"") + data
        if self._needle in window:
            self._seen_in.add(sock)
        self._tails[sock] = window[-(len(self._needle) - 1) :]
