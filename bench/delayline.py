"""A TCP delay line: the network between an app and a remote API, on the loopback.

Shared by the benchmarks (bench/on_commit.py, bench/async_send.py) and the async tests
(tests/api/test_async.py), which put it between the app and the emulator.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

__all__ = ["DelayLine"]


class DelayLine:
    """Every byte reaches the other side ``delay`` seconds later, in order.

    It models the network between an app and a remote API (the loopback has none) without
    limiting throughput: many calls can be in flight at once, as on a real connection.

    ``hold()`` stops the line (bytes wait on it, connections stay open) until ``release()``:
    a test can then keep calls in flight for as long as it needs to observe them, with no
    timing involved. The line runs its own event loop in a thread; ``close()`` stops it.
    """

    def __init__(self, target: str, delay: float, *, held: bool = False) -> None:
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.delay = delay
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._handlers: set[asyncio.Task[None]] = set()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete,
            args=(self._serve(ready, held),),
            name="delay-line",
            daemon=True,
        )
        self._thread.start()
        ready.wait()

    async def _serve(self, ready: threading.Event, held: bool) -> None:
        self._open = asyncio.Event()
        if not held:
            self._open.set()
        self._closing = asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        ready.set()
        await self._closing.wait()
        server.close()
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(handler)
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await line.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._open.wait()
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                line.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    def _call(self, action: str) -> None:
        async def run() -> None:
            if action == "hold":
                self._open.clear()
            elif action == "release":
                self._open.set()
            else:
                self._closing.set()

        # Thread-safe, and effective when this returns.
        asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def hold(self) -> None:
        """Stop forwarding: bytes wait on the line until release()."""
        self._call("hold")

    def release(self) -> None:
        """Forward again, the held bytes first."""
        self._call("release")

    def close(self) -> None:
        """Close every connection and stop the line's thread."""
        if self._thread.is_alive():
            self._call("close")
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> DelayLine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
