"""A DNS relay that adds round-trip time: UDP and TCP on 127.0.0.1:PORT to 127.0.0.1:TARGET, RTT in ms.

    python bench/relay.py PORT TARGET RTT_MS

This kernel has no netem, so the benchmark puts this in front of the server to look like a real
resolver path. Each direction waits half the RTT; waits overlap, so the relay adds latency, not a queue.
"""

from __future__ import annotations

import asyncio
import sys


class _Upstream(asyncio.DatagramProtocol):
    """One upstream socket per client address, so answers find their way back."""

    def __init__(self, relay: _Relay, client: tuple[str, int]) -> None:
        self.relay, self.client = relay, client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.later(lambda: self.relay.transport.sendto(data, self.client))


class _Relay(asyncio.DatagramProtocol):
    def __init__(self, target: int, half: float) -> None:
        self.target, self.half = target, half
        self.upstreams: dict[tuple[str, int], asyncio.Future[_Upstream]] = {}
        self.transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def later(self, action: object) -> None:
        asyncio.get_running_loop().call_later(self.half, action)  # type: ignore[arg-type]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.ensure_future(self._forward(data, addr))

    async def _forward(self, data: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        if addr not in self.upstreams:
            future: asyncio.Future[_Upstream] = loop.create_future()
            self.upstreams[addr] = future
            _, protocol = await loop.create_datagram_endpoint(lambda: _Upstream(self, addr),
                                                              remote_addr=("127.0.0.1", self.target))
            future.set_result(protocol)
        upstream = await self.upstreams[addr]
        self.later(lambda: upstream.transport.sendto(data))  # type: ignore[union-attr]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, half: float) -> None:
    try:
        while chunk := await reader.read(65536):
            await asyncio.sleep(half)
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main(port: int, target: int, rtt_ms: float) -> None:
    """Relay until killed."""
    half = rtt_ms / 2000
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: _Relay(target, half), local_addr=("127.0.0.1", port))

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(_pipe(reader, up_writer, half), _pipe(up_reader, writer, half))

    server = await asyncio.start_server(on_client, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
