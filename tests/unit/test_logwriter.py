from __future__ import annotations

import asyncio
import io
import threading

from smsbridge.logwriter import LineWriter


class CountingStream(io.BytesIO):
    """A binary stream that remembers each write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return super().write(data)


def stopped_with_a_flush_pending(writer: LineWriter, line: bytes) -> None:
    """Log on a loop that stops (and closes) in the same pass, before its flush can run."""
    loop = asyncio.new_event_loop()

    def log_and_stop() -> None:
        writer.info(line)
        loop.stop()

    loop.call_soon(log_and_stop)
    loop.run_forever()
    loop.close()


def test_off_the_loop_each_line_is_written_at_once() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    writer.info(b'{"n":1}')
    assert stream.getvalue() == b'{"n":1}\n'
    writer.error(b'{"n":2}')
    assert stream.writes == [b'{"n":1}\n', b'{"n":2}\n']


async def test_lines_of_one_loop_pass_are_written_together_after_it() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    for n in range(5):
        writer.info(b'{"n":%d}' % n)
    assert stream.getvalue() == b""  # nothing yet: the pass is still running
    await asyncio.sleep(0)
    assert stream.writes == [b"".join(b'{"n":%d}\n' % n for n in range(5))]
    writer.warning(b'{"n":5}')
    await asyncio.sleep(0)
    assert stream.writes[1:] == [b'{"n":5}\n']


def test_lines_left_by_a_stopped_loop_go_out_with_the_next_line() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)

    stopped_with_a_flush_pending(writer, b"last words")
    assert stream.getvalue() == b""

    async def log_again() -> None:
        writer.info(b"next")
        assert stream.getvalue() == b"last words\nnext\n"  # written at once, in order

    asyncio.run(log_again())


async def test_a_thread_writes_at_once_and_takes_waiting_lines_with_it() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    writer.info(b"from the loop")
    thread = threading.Thread(target=writer.info, args=(b"from a thread",))
    thread.start()
    thread.join()
    assert stream.getvalue() == b"from the loop\nfrom a thread\n"
    await asyncio.sleep(0)  # the loop's own flush finds nothing left
    assert stream.getvalue() == b"from the loop\nfrom a thread\n"


def test_flush_writes_what_waits_and_tolerates_a_closed_stream() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)

    stopped_with_a_flush_pending(writer, b"pending")
    assert stream.getvalue() == b""
    writer.flush()
    assert stream.getvalue() == b"pending\n"
    stream.close()
    writer.flush()  # nothing waits and the stream is gone: no error
