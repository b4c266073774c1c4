"""A JSON array read item by item from a binary stream: memory stays at one chunk plus one item.

Spotify's export files are JSON arrays of up to tens of megabytes; json.load would hold the whole
list (and its text) at once. This reads `chunk_bytes` at a time, decodes UTF-8 incrementally (a BOM
is accepted), and hands each array element to json.JSONDecoder.raw_decode as soon as it is complete.
The standard library only: no streaming-JSON dependency in the layer.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_decoder = json.JSONDecoder()


class NotJsonArray(ValueError):
    """The file is not a JSON array (or breaks off mid-way); the message says where."""

    def __init__(self, message: str, item_index: int | None = None):
        super().__init__(message)
        self.item_index = item_index


class CountingReader:
    """Wraps a binary stream and counts the bytes read (progress and ETA of an import)."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.bytes_read += len(data)
        return data


def iter_array(stream: BinaryIO, *, chunk_bytes: int = 64 * 1024, max_item_chars: int = 1 << 20
               ) -> Iterator[Any]:
    """Yield the elements of the top-level JSON array in `stream`, one by one.

    Raises NotJsonArray for: not UTF-8 text, a top-level value that is not an array, invalid JSON
    (with the index of the item where it broke), an element over `max_item_chars`, text after the
    closing bracket.
    """
    text = codecs.getincrementaldecoder("utf-8")("strict")
    buffer = ""
    pos = 0
    eof = False
    index = 0
    bytes_before = 0  # bytes of the stream handed to the decoder before this read
    bad_byte: int | None = None  # offset of the first byte that is not UTF-8: the items before it still count

    def fill() -> None:
        nonlocal buffer, pos, eof, bytes_before, bad_byte
        if bad_byte is not None:  # the text before the bad byte is used up: this item holds it
            if bad_byte == 0:
                raise NotJsonArray("not JSON: the file is not UTF-8 text", index)
            raise NotJsonArray(f"not UTF-8 text in item {index} (byte {bad_byte})", index)
        data = stream.read(chunk_bytes)
        eof = not data
        pending = text.getstate()[0]  # bytes of a character split across reads
        try:
            decoded = text.decode(data, final=eof)
        except UnicodeDecodeError as exc:
            # Keep the valid text before the bad byte (the decoder refuses the whole read otherwise).
            decoded = (pending + data)[:exc.start].decode("utf-8")
            bad_byte = bytes_before - len(pending) + exc.start
            eof = False  # the next fill reports it, once the items before it are out
        if bytes_before == 0 and decoded.startswith("\ufeff"):  # a byte order mark is accepted
            decoded = decoded[1:]
        bytes_before += len(data)
        buffer = buffer[pos:] + decoded
        pos = 0

    def skip_whitespace() -> None:
        nonlocal pos
        while True:
            pos = _WHITESPACE.match(buffer, pos).end()  # type: ignore[union-attr]
            if pos < len(buffer) or eof:
                return
            fill()

    fill()
    skip_whitespace()
    if pos >= len(buffer):
        raise NotJsonArray("not JSON: the file holds no JSON value (empty or whitespace only)", 0)
    if buffer[pos] != "[":
        kind = "an object" if buffer[pos] == "{" else "not JSON"
        raise NotJsonArray(f"expected a JSON array of streams, found {kind} at the start of the file", 0)
    pos += 1
    skip_whitespace()
    if pos < len(buffer) and buffer[pos] == "]":
        pos += 1
    else:
        while True:
            while True:
                try:
                    value, end = _decoder.raw_decode(buffer, pos)
                except json.JSONDecodeError as exc:
                    if eof:
                        raise NotJsonArray(f"invalid JSON in item {index}: {exc.msg}", index) from None
                    if len(buffer) - pos > max_item_chars:
                        raise NotJsonArray(f"item {index} is larger than {max_item_chars} characters", index) from None
                    fill()
                    continue
                except RecursionError:  # the decoder recurses per level: a few thousand levels exhaust it
                    raise NotJsonArray(f"invalid JSON in item {index}: nested too deeply", index) from None
                except ValueError:  # int() refuses over sys.get_int_max_str_digits() digits (4,300)
                    raise NotJsonArray(f"invalid JSON in item {index}: a number with too many digits", index) from None
                # A number (or literal) that ends exactly at the buffer's end may continue in the next chunk.
                if end == len(buffer) and not eof:
                    fill()
                    continue
                break
            pos = end
            yield value
            index += 1
            skip_whitespace()
            if pos >= len(buffer):
                raise NotJsonArray(f"invalid JSON: the array breaks off after item {index - 1}", index)
            if buffer[pos] == ",":
                pos += 1
                skip_whitespace()
                continue
            if buffer[pos] == "]":
                pos += 1
                break
            raise NotJsonArray(f"invalid JSON after item {index - 1}: expected ',' or ']'", index)
    skip_whitespace()
    if pos < len(buffer):
        raise NotJsonArray("invalid JSON: text after the end of the array", index)


def iter_lines(stream: BinaryIO, *, chunk_bytes: int = 64 * 1024, max_item_chars: int = 1 << 20) -> Iterator[Any]:
    """Yield the JSON value of each non-blank line of `stream` (JSON Lines: ListenBrainz's listens).

    Lines are split as bytes and decoded one by one, so an error names its line: NotJsonArray (the
    error of a file that cannot be read as JSON) for a line that is not UTF-8 or not JSON, a line
    over `max_item_chars`, or a file without any value. `item_index` is the number of values before.
    """
    buffer = b""
    line_no = index = 0
    eof = False
    while not eof:
        data = stream.read(chunk_bytes)
        eof = not data
        buffer += data
        lines = buffer.split(b"\n")
        buffer = b"" if eof else lines.pop()
        if len(buffer) > 4 * max_item_chars:  # UTF-8: at most 4 bytes a character
            raise NotJsonArray(f"line {line_no + len(lines) + 1} is longer than {max_item_chars} characters", index)
        for raw in lines:
            line_no += 1
            if line_no == 1 and raw.startswith(codecs.BOM_UTF8):  # a byte order mark is accepted
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise NotJsonArray(f"not UTF-8 text on line {line_no}", index) from None
            if not text.strip():
                continue
            if len(text) > max_item_chars:
                raise NotJsonArray(f"line {line_no} is longer than {max_item_chars} characters", index)
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise NotJsonArray(f"invalid JSON on line {line_no}: {exc.msg}", index) from None
            except RecursionError:
                raise NotJsonArray(f"invalid JSON on line {line_no}: nested too deeply", index) from None
            except ValueError:  # int() refuses over sys.get_int_max_str_digits() digits
                raise NotJsonArray(f"invalid JSON on line {line_no}: a number with too many digits", index) from None
            yield value
            index += 1
    if index == 0:
        raise NotJsonArray("not JSON: the file holds no JSON value (empty or whitespace only)", 0)


class _Prefixed:
    """A stream whose first bytes were read already (to look at them) and are handed out again."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head, self._stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        if size < 0:
            data, self._head = self._head + self._stream.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data


def iter_items(stream: BinaryIO, *, lines: bool | None = None) -> Iterator[Any]:
    """The items of a file: a JSON array's elements, or JSON Lines' values (`lines`; None: JSON Lines
    when the first character that is not whitespace opens an object, else an array)."""
    if lines is None:
        head = stream.read(4096)
        start = head.removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n")[:1]
        lines = start == b"{"
        stream = _Prefixed(head, stream)  # type: ignore[assignment]
    return iter_lines(stream) if lines else iter_array(stream)
