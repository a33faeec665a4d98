"""A length-prefixed echo server as a Python programmer would write it with asyncio:
correct (reads whole messages with readexactly), one coroutine per connection.
Anchor for bench/compare. Usage: py_echo.py PORT
"""
import asyncio
import sys


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readexactly(4)
            payload = await reader.readexactly(int.from_bytes(head, "big"))
            writer.write(head + payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


asyncio.run(main(int(sys.argv[1])))
