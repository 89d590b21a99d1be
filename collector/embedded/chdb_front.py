"""ClickHouse HTTP front for the embedded chdb engine.

Speaks the subset of ClickHouse's HTTP interface (port 8123 style) that the
Rust `clickhouse` crate 0.15 uses, on top of chdb (ClickHouse as an in-process
library). Test and embedded-mode infrastructure; production talks to a real
ClickHouse server.

Usage: python chdb_front.py --data-dir DIR [--host 127.0.0.1] [--port 0]
                            [--exit-on-stdin-close] [--log-requests]
After binding it prints exactly one line `LISTENING <port>` to stdout. Logs go
to stderr (errors only, unless --log-requests). SIGTERM/SIGINT stop it cleanly.

How requests map onto chdb:
- URL parameters other than the HTTP interface's own (RESERVED_PARAMS,
  param_*) are settings, applied with SET on a pooled connection that is then
  discarded, so unknown ones fail with Code 115 and nothing leaks.
- `INSERT ... FORMAT X` in the `query` parameter streams the body (chunked,
  Content-Encoding, `decompress=1` native LZ4 blocks) piece by piece into a
  temporary file, then runs `INSERT ... FROM INFILE` (chdb's streaming
  inserter answers success for rows the engine refused).
- SELECTs in formats that concatenate stream block by block (repeated
  per-block headers stripped); everything else is buffered. A failure after
  the 200 was sent is reported with ClickHouse's X-ClickHouse-Exception-Tag
  trailer.
- `compress=1` answers native LZ4 blocks; Accept-Encoding is ignored (plain
  responses, as a server without enable_http_compression answers).
- session_id, query_id, user/password and roles are accepted and ignored.
"""

import argparse
import http.server
import io
import json
import os
import re
import secrets
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import zlib

import chdb
import lz4.block
import lz4.frame
from clickhouse_cityhash.cityhash import CityHash128

ENGINE_VERSION = chdb.engine_version
LOG_REQUESTS = False

# URL parameters the server itself interprets; every other one is a setting
# (list taken from ClickHouse's HTTPHandler, plus the ones this front reads).
RESERVED_PARAMS = frozenset({
    "query", "database", "default_format", "compress", "decompress", "user",
    "password", "quota_key", "query_id", "stacktrace", "role", "buffer_size",
    "wait_end_of_query", "session_id", "session_timeout", "session_check",
    "close_session", "client_protocol_version",
})

SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
READ_PIECE = 1 << 20            # transport read granularity for bodies
MAX_SQL_BODY = 256 << 20        # a query text (or multipart form) read into memory
MAX_BLOCK_SIZE = 1 << 30        # ClickHouse's own limit for one compressed block
RESPONSE_BLOCK = 1 << 20        # block size for `compress=1` responses

# Error-code -> HTTP status, as ClickHouse's exceptionCodeToHTTPStatus does.
_BAD_REQUEST_CODES = {6, 25, 26, 27, 37, 38, 41, 53, 62, 72, 117, 321}
_NOT_FOUND_CODES = {46, 47, 50, 56, 60, 63, 73, 78, 81, 115}
_OTHER_STATUS = {229: 413, 48: 501, 381: 411, 159: 408}


# --------------------------------------------------------------------------
# Errors


class ClickHouseError(Exception):
    """An error answered as ClickHouse would: status, code header and text.

    `broken_transport` marks errors after which the request framing can no
    longer be trusted, so the connection must be closed after the answer.
    """

    def __init__(self, code, message, status=None, broken_transport=False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or http_status_for(code)
        self.broken_transport = broken_transport

    def body(self):
        return f"Code: {self.code}. DB::Exception: {self.message}"


class TransportError(ClickHouseError):
    """Malformed HTTP body framing or native compression: always a 400."""

    def __init__(self, code, message, broken_transport=False):
        super().__init__(code, message, 400, broken_transport)


def http_status_for(code):
    if code in _BAD_REQUEST_CODES:
        return 400
    if code in _NOT_FOUND_CODES:
        return 404
    return _OTHER_STATUS.get(code, 500)


_CODE_PREFIX = re.compile(r"Code: (\d+)\. DB::Exception: ")
_WRAPPER_PREFIXES = ("Streaming query failed: ", "Streaming insert append failed: ",
                     "Streaming insert finish failed: ")


def engine_error(exc):
    """Turn a chdb exception into a ClickHouseError.

    chdb sometimes nests the message ("Code: 115. DB::Exception: Code: 115.
    DB::Exception: ... (version X). (NAME)") and its streaming wrappers add
    their own prefixes; clients expect a single "Code: N. DB::Exception:".
    """
    text = str(exc).strip()
    for prefix in _WRAPPER_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
    match = _CODE_PREFIX.match(text)
    if not match:
        return ClickHouseError(1001, text or type(exc).__name__)
    code = int(match.group(1))
    depth = 0
    while True:
        match = _CODE_PREFIX.match(text)
        if not match:
            break
        text = text[match.end():]
        depth += 1
    if depth > 1:
        # The outer wrapper repeats "(NAME)" after the inner "(version ...)".
        text = re.sub(r"\. \([A-Z_]+\)\Z", "", text)
    return ClickHouseError(code, text)


# --------------------------------------------------------------------------
# Request bodies


class QuickAckReader(io.RawIOBase):
    """Socket reader that re-arms TCP_QUICKACK before every recv.

    The crate writes bodies with Nagle on; with delayed ACKs on our side each
    insert chunk would stall about 40 ms waiting for an ACK. QUICKACK is not
    sticky on Linux, hence the per-read setsockopt.
    """

    def __init__(self, sock):
        super().__init__()
        self._sock = sock
        self._quickack = getattr(socket, "TCP_QUICKACK", None)

    def readable(self):
        return True

    def readinto(self, buffer):
        if self._quickack is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, self._quickack, 1)
            except OSError:
                self._quickack = None
        return self._sock.recv_into(buffer)


class SocketWriter(io.RawIOBase):
    """Unbuffered writer that never writes partially (sendall)."""

    def __init__(self, sock):
        super().__init__()
        self._sock = sock

    def writable(self):
        return True

    def write(self, data):
        self._sock.sendall(data)
        return len(data)


class RequestBody:
    """The request body as a stream of decoded pieces.

    Layers, in ClickHouse's order: transport framing (chunked or
    Content-Length), then HTTP Content-Encoding, then ClickHouse native
    compressed blocks when `decompress=1`.
    """

    def __init__(self, rfile, headers):
        self._rfile = rfile
        self.native_compressed = False  # `decompress=1`, set once the URL is parsed
        self.complete = False           # transport fully read
        self.broken = False             # transport framing unusable
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length = headers.get("Content-Length") or "0"
        if not chunked and not length.strip().isdigit():
            self.broken = True
            raise TransportError(33, f"Invalid Content-Length: {length!r}", True)
        self.present = chunked or int(length) > 0
        self._transport = self._transport_pieces(chunked, int(length or 0) if not chunked else 0)
        self._content_encoding = headers.get("Content-Encoding", "").strip().lower()

    def _transport_pieces(self, chunked, length):
        try:
            if chunked:
                yield from self._chunked_pieces()
            else:
                yield from self._sized_pieces(length)
        except TransportError:
            self.broken = True
            raise
        except (OSError, ValueError) as exc:
            self.broken = True
            raise TransportError(33, f"Cannot read request body: {exc}", True) from exc
        self.complete = True

    def _sized_pieces(self, remaining):
        while remaining > 0:
            piece = self._rfile.read(min(remaining, READ_PIECE))
            if not piece:
                raise TransportError(33, "Cannot read all data: request body truncated", True)
            remaining -= len(piece)
            yield piece

    def _chunked_pieces(self):
        # http.server does not decode Transfer-Encoding: chunked itself.
        while True:
            line = self._rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise TransportError(33, "Malformed chunked encoding: bad chunk size line", True)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise TransportError(33, f"Malformed chunked encoding: bad chunk size {size_text!r}",
                                     True) from None
            if size < 0:
                raise TransportError(33, "Malformed chunked encoding: negative chunk size", True)
            if size == 0:
                self._skip_trailers()
                return
            yield from self._sized_pieces(size)
            if self._rfile.read(2) != b"\r\n":
                raise TransportError(33, "Malformed chunked encoding: missing CRLF after chunk", True)

    def _skip_trailers(self):
        while True:
            line = self._rfile.readline(8192)
            if not line:
                raise TransportError(33, "Malformed chunked encoding: truncated trailers", True)
            if line in (b"\r\n", b"\n"):
                return

    def pieces(self):
        """Decoded body pieces; raises ClickHouseError on malformed input."""
        stream = self._transport
        if self._content_encoding not in ("", "identity"):
            stream = content_decoded(stream, self._content_encoding)
        if self.native_compressed:
            stream = native_decompressed(stream)
        return stream

    def read_all(self, limit=MAX_SQL_BODY):
        parts, size = [], 0
        for piece in self.pieces():
            size += len(piece)
            if size > limit:
                raise ClickHouseError(229, f"Request body is larger than {limit} bytes")
            parts.append(piece)
        return b"".join(parts)

    def drain(self):
        """Consume the rest of the transport so the connection can be reused."""
        if self.broken or self.complete:
            return
        try:
            for _ in self._transport:
                pass
        except ClickHouseError:
            pass


def content_decoded(pieces, encoding):
    """HTTP Content-Encoding of the request body (gzip, deflate, lz4 frame)."""
    if encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(wbits=31)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    elif encoding == "lz4":
        decoder = lz4.frame.LZ4FrameDecompressor()
    else:
        raise TransportError(89, f"Unsupported Content-Encoding: {encoding}")
    try:
        for piece in pieces:
            out = decoder.decompress(piece)
            if out:
                yield out
        if encoding != "lz4":
            tail = decoder.flush()
            if tail:
                yield tail
    except (zlib.error, RuntimeError) as exc:
        raise TransportError(271, f"Cannot decompress {encoding} body: {exc}") from exc


def block_checksum(header_and_data):
    """ClickHouse's CityHash128 (v1.0.2) block checksum, as written on the wire.

    The crate stores `rotate_right(hash, 64)` as a little-endian u128, i.e.
    the high 64 bits first.
    """
    value = CityHash128(header_and_data)
    return struct.pack("<QQ", value >> 64, value & 0xFFFFFFFFFFFFFFFF)


def native_decompressed(pieces):
    """Decode ClickHouse native compressed blocks (`decompress=1`).

    Block: 16-byte checksum, method byte, u32 LE size of header+data (the
    9-byte header included), u32 LE raw size, payload. Blocks do not align
    with HTTP chunks, so bytes are buffered across pieces.
    """
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        pos = 0
        while len(buffer) - pos >= 25:
            method = buffer[pos + 16]
            compressed_size, raw_size = struct.unpack_from("<II", buffer, pos + 17)
            if compressed_size < 9 or compressed_size > MAX_BLOCK_SIZE or raw_size > MAX_BLOCK_SIZE:
                raise TransportError(39, f"Too large size of compressed block: "
                                         f"{compressed_size} compressed, {raw_size} raw")
            end = pos + 16 + compressed_size
            if len(buffer) < end:
                break
            block = bytes(buffer[pos + 16:end])
            expected = bytes(buffer[pos:pos + 16])
            if block_checksum(block) != expected:
                raise TransportError(40, "Checksum doesn't match: corrupted data. Reference: "
                                         f"{expected.hex()}. Actual: {block_checksum(block).hex()}. "
                                         f"Size of compressed block: {compressed_size}")
            yield decompress_block(method, block[9:], raw_size)
            pos = end
        del buffer[:pos]
    if buffer:
        raise TransportError(33, f"Cannot read all data: {len(buffer)} bytes of an incomplete "
                                 "compressed block at the end of the body")


def decompress_block(method, payload, raw_size):
    if method == 0x82:
        try:
            data = lz4.block.decompress(payload, uncompressed_size=raw_size)
        except lz4.block.LZ4BlockError as exc:
            raise TransportError(271, f"Cannot decompress LZ4 block: {exc}") from exc
    elif method == 0x02:
        data = payload
    else:
        raise TransportError(89, f"Unknown compression method: 0x{method:02x} "
                                 "(this front supports LZ4 and NONE)")
    if len(data) != raw_size:
        raise TransportError(271, f"Cannot decompress: got {len(data)} bytes, header says {raw_size}")
    return data


def native_compress(data):
    """One ClickHouse native LZ4 block (for `compress=1` responses)."""
    payload = lz4.block.compress(data, store_size=False)
    header = struct.pack("<BII", 0x82, 9 + len(payload), len(data))
    return block_checksum(header + payload) + header + payload


def parse_multipart(body, content_type):
    """Fields of a multipart/form-data body (the crate's `.param()` requests)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ClickHouseError(36, "multipart/form-data without a boundary")
    delimiter = b"--" + match.group(1).encode()
    fields = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, _, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if not name or b"filename=" in head:
            continue  # external-data file uploads are not supported
        if value.endswith(b"\r\n"):
            value = value[:-2]
        fields[name.group(1).decode()] = value.decode("utf-8")
    return fields


# --------------------------------------------------------------------------
# SQL inspection (only as much as needed to route a statement)


_SQL_MASK = re.compile(r"""'(?:[^'\\]|\\.|'')*'?|"(?:[^"\\]|\\.|"")*"?|`(?:[^`\\]|\\.|``)*`?"""
                       r"""|--[^\n]*|\#[^\n]*|/\*.*?(?:\*/|\Z)""", re.S)


def mask_sql(sql):
    """SQL with literals, quoted identifiers and comments blanked out.

    Keeps offsets, so a keyword found in the mask is at the same position in
    the original text.
    """
    return _SQL_MASK.sub(lambda m: " " * len(m.group(0)), sql)


def first_keyword(masked):
    match = re.match(r"\s*\(*\s*([A-Za-z]+)", masked)
    return match.group(1).upper() if match else ""


_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)\s*;?\s*\Z", re.I)
_ANY_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)", re.I)


def split_insert(sql):
    """'INSERT INTO t(cols) FORMAT X' -> ('INSERT INTO t(cols)', 'X'), else None."""
    masked = mask_sql(sql)
    if first_keyword(masked) != "INSERT":
        return None
    match = _TRAILING_FORMAT.search(masked)
    if not match:
        return None
    return sql[:match.start()].rstrip(), match.group(1)


def output_format(masked, default_format):
    """The format chdb will use: a FORMAT clause in the SQL wins."""
    found = _ANY_FORMAT.findall(masked)
    return found[-1] if found else default_format


# Formats whose per-block documents concatenate into one valid document once
# the repeated header of each later block is removed.
_NO_HEADER_FORMATS = frozenset({
    "TabSeparated", "TSV", "TabSeparatedRaw", "TSVRaw", "Raw", "CSV", "RowBinary",
    "JSONEachRow", "JSONLines", "NDJSON", "JSONCompactEachRow", "JSONStringsEachRow",
    "JSONCompactStringsEachRow", "Native", "RawBLOB", "LineAsString",
})
_HEADER_LINE_FORMATS = {
    "TabSeparatedWithNames": 1, "TSVWithNames": 1, "TabSeparatedWithNamesAndTypes": 2,
    "TSVWithNamesAndTypes": 2, "TabSeparatedRawWithNames": 1, "TSVRawWithNames": 1,
    "TabSeparatedRawWithNamesAndTypes": 2, "TSVRawWithNamesAndTypes": 2,
    "CSVWithNames": 1, "CSVWithNamesAndTypes": 2,
    "JSONCompactEachRowWithNames": 1, "JSONCompactEachRowWithNamesAndTypes": 2,
    "JSONCompactStringsEachRowWithNames": 1, "JSONCompactStringsEachRowWithNamesAndTypes": 2,
}
_ROWBINARY_HEADER_FORMATS = {"RowBinaryWithNames": 1, "RowBinaryWithNamesAndTypes": 2}


def streamable(fmt):
    return fmt in _NO_HEADER_FORMATS or fmt in _HEADER_LINE_FORMATS or fmt in _ROWBINARY_HEADER_FORMATS


def read_varuint(data, pos):
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def header_length(fmt, block):
    """Length of the header that chdb repeats at the start of every block."""
    if fmt in _ROWBINARY_HEADER_FORMATS:
        columns, pos = read_varuint(block, 0)
        for _ in range(columns * _ROWBINARY_HEADER_FORMATS[fmt]):
            size, pos = read_varuint(block, pos)
            pos += size
        return pos
    if fmt in _HEADER_LINE_FORMATS:
        pos = 0
        for _ in range(_HEADER_LINE_FORMATS[fmt]):
            pos = block.index(b"\n", pos) + 1
        return pos
    return 0


CONTENT_TYPES = {"RowBinary": "application/octet-stream", "Native": "application/octet-stream",
                 "JSON": "application/json; charset=UTF-8", "CSV": "text/csv; charset=UTF-8"}


def content_type_for(fmt):
    if fmt.startswith("RowBinary"):
        return "application/octet-stream"
    if fmt.startswith("TabSeparated") or fmt.startswith("TSV"):
        return "text/tab-separated-values; charset=UTF-8"
    return CONTENT_TYPES.get(fmt, "text/plain; charset=UTF-8")


# --------------------------------------------------------------------------
# Engine


class PooledConnection:
    def __init__(self, conn):
        self.conn = conn
        self.database = "default"
        self.reusable = True


class Engine:
    """One chdb engine (one data path) with a pool of clean connections.

    Settings are applied with SET on a connection, and a connection that got
    SET (or ran a session-changing statement) is closed after the request
    instead of pooled, so no setting leaks into the next request. An anchor
    connection keeps the engine alive (chdb shuts it down with the last one).
    """

    MAX_IDLE = 16

    def __init__(self, path):
        self.path = path
        self._anchor = chdb.connect(path)
        self._idle = []
        self._lock = threading.Lock()

    def acquire(self, database, settings):
        with self._lock:
            pooled = self._idle.pop() if self._idle else None
        if pooled is None:
            pooled = PooledConnection(chdb.connect(self.path))
        # A request without a database runs in `default`, as on a server: a
        # pooled connection may still be in the database an earlier request named.
        database = database or "default"
        try:
            if database != pooled.database:
                pooled.conn.query(f"USE {quote_identifier(database)}")
                pooled.database = database
            if settings:
                pooled.reusable = False
                pooled.conn.query(set_statement(settings))
        except Exception as exc:
            self.release(pooled)
            raise engine_error(exc) from exc
        return pooled

    def release(self, pooled):
        if pooled.reusable:
            with self._lock:
                if len(self._idle) < self.MAX_IDLE:
                    self._idle.append(pooled)
                    return
        close_quietly(pooled.conn)

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for pooled in idle:
            close_quietly(pooled.conn)
        close_quietly(self._anchor)


def close_quietly(conn):
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing must never fail a shutdown
        pass


def quote_identifier(name):
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def set_statement(settings):
    # URL settings are strings on a real server too; ClickHouse converts a
    # string literal to the setting's type, and unknown names fail with 115.
    return "SET " + ", ".join(f"{name} = {quote_string(value)}" for name, value in settings.items())


# --------------------------------------------------------------------------
# One HTTP request


class Request:
    """What a ClickHouse HTTP request asks for, from URL, headers and form."""

    def __init__(self, path, headers):
        url = urllib.parse.urlsplit(path)
        self.path = url.path
        self.query = None
        self.database = headers.get("X-ClickHouse-Database") or None
        self.default_format = headers.get("X-ClickHouse-Format") or "TabSeparated"
        self.decompress = False
        self.compress = False
        self.query_id = None
        self.settings = {}
        self.params = {}
        for name, value in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
            self._take(name, value)

    def _take(self, name, value):
        if name == "query":
            self.query = value
        elif name == "database":
            self.database = value or self.database
        elif name == "default_format":
            self.default_format = value or self.default_format
        elif name == "decompress":
            self.decompress = value not in ("", "0")
        elif name == "compress":
            self.compress = value not in ("", "0")
        elif name == "query_id":
            self.query_id = value
        elif name.startswith("param_"):
            self.params[name[len("param_"):]] = value
        elif name in RESERVED_PARAMS or name.startswith("session_"):
            pass  # accepted and ignored: no users, roles or sessions here
        elif not SETTING_NAME.match(name):
            raise ClickHouseError(115, f"Unknown setting '{name}'")
        else:
            self.settings[name] = value

    def take_form(self, fields):
        for name, value in fields.items():
            self._take(name, value)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 600  # idle keep-alive connections
    rbufsize = 256 * 1024

    def setup(self):
        # Not StreamRequestHandler.setup(): its makefile() reader would hold a
        # reference that delays the socket's close.
        self.connection = self.request
        self.server.track(self.connection)
        self.connection.settimeout(self.timeout)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = io.BufferedReader(QuickAckReader(self.connection), self.rbufsize)
        self.wfile = SocketWriter(self.connection)

    def finish(self):
        self.server.untrack(self.connection)
        super().finish()

    def version_string(self):
        return f"chdb-front (ClickHouse {ENGINE_VERSION})"

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        log(format % args)

    def log_request(self, code="-", size="-"):
        pass  # requests are logged by _log_done with more useful detail

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _handle(self):
        self.server.activity.enter()
        started = time.monotonic()
        self._sql_for_log = ""
        self._status = 200
        self._headers_sent = False
        body = None
        try:
            body = RequestBody(self.rfile, self.headers)
            request = Request(self.path, self.headers)
            body.native_compressed = request.decompress
            self._route(request, body)
        except ClickHouseError as exc:
            self._fail(exc, body)
        except Exception as exc:  # noqa: BLE001 - an engine surprise must not kill the handler
            self._fail(engine_error(exc), body)
        finally:
            self._log_done(started)
            self.server.activity.leave()

    def _route(self, request, body):
        if request.path in ("/ping", "/replicas_status"):
            body.drain()
            return self._reply(b"Ok.\n", "text/plain; charset=UTF-8")
        if request.path != "/":
            body.drain()
            raise ClickHouseError(
                0, f"There is no handle {request.path}", status=404)
        if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
            request.take_form(parse_multipart(body.read_all(), self.headers["Content-Type"]))
            body.present = False  # the form was the whole body
        if request.query is None and not body.present:
            return self._reply(b"Ok.\n", "text/plain; charset=UTF-8")
        Execution(self, request, body).run()

    # -- responses

    def _fail(self, error, body):
        if body is not None and not error.broken_transport:
            body.drain()
        close = body is None or body.broken or (body.present and not body.complete)
        self._status = error.status
        log(f"error {error.status} Code {error.code}: {error.message[:500]} "
            f"[sql: {self._sql_for_log[:200]!r}]")
        if self._headers_sent:
            self.close_connection = True
            return
        text = (error.body() + "\n").encode()
        self.send_response(error.status)
        self.send_header("X-ClickHouse-Exception-Code", str(error.code))
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(text)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._write(text)

    def _reply(self, data, content_type, extra_headers=()):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self._headers_sent = True
        self._write(data)

    def start_chunked(self, content_type, extra_headers=()):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self._headers_sent = True

    def write_chunk(self, data):
        if data:
            self.wfile.write(b"%x\r\n" % len(data))
            self.wfile.write(data)
            self.wfile.write(b"\r\n")

    def end_chunked(self):
        self.wfile.write(b"0\r\n\r\n")

    def _write(self, data):
        try:
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _log_done(self, started):
        if LOG_REQUESTS or self._status >= 500:
            elapsed = (time.monotonic() - started) * 1000
            log(f"{self.command} {self._status} {elapsed:.1f} ms {self._sql_for_log[:160]!r}")


class Execution:
    """Runs one statement of a request against the engine and answers it."""

    def __init__(self, handler, request, body):
        self.handler = handler
        self.request = request
        self.body = body
        self.engine = handler.server.engine

    def run(self):
        query = self.request.query
        if query is None:
            sql = self.body.read_all()
            self.handler._sql_for_log = sql[:200].decode("utf-8", "replace")
        else:
            self.handler._sql_for_log = query
            insert = split_insert(query)
            if insert is not None:
                # The body is the data (an empty body inserts nothing).
                return self._insert(*insert)
            sql = query.encode()
            if self.body.present:
                # ClickHouse concatenates the `query` parameter, a newline and the body.
                sql += b"\n" + self.body.read_all()
        if not sql.strip():
            raise ClickHouseError(62, "Empty query")
        self._statement(sql)

    # -- INSERT ... FORMAT X with the data in the body

    def _insert(self, prefix, fmt):
        pooled = self.engine.acquire(self.request.database, self.request.settings)
        try:
            result = self._stream_insert(pooled, prefix, fmt)
        except Exception:
            pooled.reusable = False
            raise
        finally:
            self.engine.release(pooled)
        summary = summary_header(result.elapsed, written_rows=result.rows_written,
                                 written_bytes=result.bytes_written,
                                 result_rows=result.rows_written,
                                 result_bytes=result.bytes_written)
        self.handler._reply(b"", "text/plain; charset=UTF-8", self._common_headers(summary))

    def _stream_insert(self, pooled, prefix, fmt):
        # The body is spilled to a file and inserted with FROM INFILE: chdb's
        # streaming inserter (send_insert) reports rows it never wrote when the
        # engine refuses them (a violated constraint, more than 100 partitions in
        # one block) — the client would take a refused INSERT for a stored one.
        # The body still never sits in memory whole.
        with tempfile.NamedTemporaryFile(prefix="chdb-front-insert-", suffix=".bin") as spill:
            for piece in self.body.pieces():
                spill.write(piece)
            spill.flush()
            path = spill.name.replace("\\", "\\\\").replace("'", "\\'")
            try:
                result = pooled.conn.query(f"{prefix} FROM INFILE '{path}' FORMAT {fmt}")
            except Exception as exc:
                raise engine_error(exc) from exc
        return InsertDone(rows_written=result.rows_written(),
                          bytes_written=result.bytes_written(),
                          elapsed=result.elapsed())

    # -- everything else

    def _statement(self, sql):
        text = sql.decode("utf-8", "replace")
        masked = mask_sql(text[:65536])
        keyword = first_keyword(masked)
        fmt = output_format(masked, self.request.default_format)
        pooled = self.engine.acquire(self.request.database, self.request.settings)
        if keyword in ("SET", "USE") or re.search(r"\bTEMPORARY\b", masked, re.I):
            pooled.reusable = False  # would change the session of a pooled connection
        try:
            if self._can_stream(keyword, masked, fmt):
                if self._stream_select(pooled, sql, fmt):
                    return
            self._buffered(pooled, sql, fmt)
        except Exception:
            pooled.reusable = False
            raise
        finally:
            self.engine.release(pooled)

    def _can_stream(self, keyword, masked, fmt):
        # chdb streams only SELECTs, drops TOTALS/extremes rows when streaming,
        # and each streamed block is a standalone document (a JSON array of
        # rows per block would not concatenate).
        settings = self.request.settings
        return (keyword in ("SELECT", "WITH") and streamable(fmt)
                and not re.search(r"\bTOTALS\b|\bINTO\s+OUTFILE\b|\bextremes\b"
                                  r"|\boutput_format_json_array_of_rows\b", masked, re.I)
                and settings.get("extremes", "0") in ("0", "false")
                and settings.get("output_format_json_array_of_rows", "0") in ("0", "false")
                and not self.request.compress)

    def _buffered(self, pooled, sql, fmt):
        try:
            result = pooled.conn.query(sql, self.request.default_format,
                                       params=self.request.params)
        except Exception as exc:
            raise engine_error(exc) from exc
        # A zero-copy view: results can be large, and `result` outlives the write.
        data = result.get_memview().view() if result is not None else b""
        if self.request.compress:
            data = b"".join(native_compress(data[i:i + RESPONSE_BLOCK])
                            for i in range(0, len(data), RESPONSE_BLOCK))
        summary = summary_header(result.elapsed(), read_rows=result.storage_rows_read(),
                                 read_bytes=result.storage_bytes_read(),
                                 result_rows=result.rows_read(),
                                 result_bytes=len(data)) if result is not None else None
        headers = self._common_headers(summary) + [("X-ClickHouse-Format", fmt)]
        self.handler._reply(data, content_type_for(fmt), headers)

    def _stream_select(self, pooled, sql, fmt):
        """Stream a SELECT block by block; False if the caller must buffer it."""
        try:
            stream = pooled.conn.send_query(sql, self.request.default_format,
                                            params=self.request.params)
            first = stream.fetch()
        except Exception as exc:
            error = engine_error(exc)
            if error.code == 36 and "Streaming query is not supported" in error.message:
                return False
            raise error from exc
        if first is None:
            # chdb yields nothing for an empty result, but the format's
            # header (e.g. RowBinaryWithNamesAndTypes names/types) must be sent.
            return False
        first = first.bytes()
        skip = header_length(fmt, first)
        header = first[:skip]
        tag = secrets.token_hex(8)
        headers = self._common_headers(None) + [("X-ClickHouse-Format", fmt),
                                                ("X-ClickHouse-Exception-Tag", tag)]
        handler = self.handler
        handler.start_chunked(content_type_for(fmt), headers)
        try:
            handler.write_chunk(first)
            while True:
                try:
                    block = stream.fetch()
                except Exception as exc:
                    pooled.reusable = False
                    self._write_stream_exception(engine_error(exc), tag)
                    break
                if block is None:
                    break
                block = block.bytes()
                handler.write_chunk(block[skip:] if skip and block.startswith(header) else block)
            handler.end_chunked()
        except OSError:  # the client went away mid-result
            handler.close_connection = True
            pooled.reusable = False
            try:
                stream.cancel()
            except Exception:  # noqa: BLE001 - the connection is discarded anyway
                pass
        return True

    def _write_stream_exception(self, error, tag):
        # After a 200 has been sent, ClickHouse (>= 25.11) reports a failure
        # with this tagged trailer, which the crate looks for at the end of a
        # chunk. The length counts the message and its newline.
        log(f"error mid-stream Code {error.code}: {error.message[:500]}")
        message = (error.body() + "\n").encode()
        tag_bytes = tag.encode()
        self.handler.write_chunk(b"\r\n__exception__\r\n" + tag_bytes + b"\r\n" + message
                                 + str(len(message)).encode() + b" " + tag_bytes
                                 + b"\r\n__exception__\r\n")
        self.handler.close_connection = True

    def _common_headers(self, summary):
        headers = [("X-ClickHouse-Query-Id", self.request.query_id or str(uuid.uuid4())),
                   ("X-ClickHouse-Server-Display-Name", "chdb-front")]
        if summary:
            headers.append(("X-ClickHouse-Summary", summary))
        return headers


class InsertDone:
    """What an INSERT wrote, as the summary header reports it."""

    def __init__(self, rows_written, bytes_written, elapsed):
        self.rows_written = rows_written
        self.bytes_written = bytes_written
        self.elapsed = elapsed


def summary_header(elapsed=0.0, **counts):
    """X-ClickHouse-Summary: a JSON object of decimal strings, as ClickHouse sends."""
    fields = {name: str(counts.get(name, 0)) for name in (
        "read_rows", "read_bytes", "written_rows", "written_bytes", "total_rows_to_read",
        "result_rows", "result_bytes")}
    fields["elapsed_ns"] = str(int(elapsed * 1e9))
    return json.dumps(fields, separators=(",", ":"))


# --------------------------------------------------------------------------
# Server


class Activity:
    """Counts requests in progress so shutdown can wait for them."""

    def __init__(self):
        self._count = 0
        self._cond = threading.Condition()

    def enter(self):
        with self._cond:
            self._count += 1

    def leave(self):
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout):
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, engine):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.engine = engine
        self.activity = Activity()
        self._connections = set()
        self._connections_lock = threading.Lock()

    def track(self, sock):
        with self._connections_lock:
            self._connections.add(sock)

    def untrack(self, sock):
        with self._connections_lock:
            self._connections.discard(sock)

    def close_connections(self):
        """Ends kept-alive connections, so clients see the server gone instead of
        sending requests a stopping engine would never answer."""
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # a client going away is not worth a traceback
        log(f"unhandled error from {client_address}: {exc!r}")


def log(message):
    sys.stderr.write(f"chdb-front: {message}\n")
    sys.stderr.flush()


def wait_for_stdin_eof(stop):
    while sys.stdin.buffer.read(65536):
        pass
    log("stdin closed")
    stop.set()


def main(argv=None):
    global LOG_REQUESTS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="chdb database path (created if missing)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config-file", default=None,
                        help="a ClickHouse server config (remote_servers, macros, ...) for the engine")
    parser.add_argument("--log-requests", action="store_true", help="log every request to stderr")
    parser.add_argument("--exit-on-stdin-close", action="store_true",
                        help="stop when stdin reaches EOF (the parent died or closed the pipe)")
    args = parser.parse_args(argv)
    LOG_REQUESTS = args.log_requests

    os.makedirs(args.data_dir, exist_ok=True)
    path = os.path.abspath(args.data_dir)
    if args.config_file:
        # chdb takes server options as parameters of its connection string.
        path += "?config-file=" + os.path.abspath(args.config_file)
    engine = Engine(path)
    server = Server((args.host, args.port), engine)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    if args.exit_on_stdin_close:
        # A parent killed with SIGKILL cannot stop us, but its end of our
        # stdin pipe closes with it.
        threading.Thread(target=wait_for_stdin_eof, args=(stop,), name="stdin", daemon=True).start()

    # serve_forever runs off the main thread: shutdown() called from a signal
    # handler on the serving thread would deadlock.
    serving = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    serving.start()
    log(f"chdb {ENGINE_VERSION} at {args.data_dir}, listening on {args.host}:{server.server_address[1]}")
    sys.stdout.write(f"LISTENING {server.server_address[1]}\n")
    sys.stdout.flush()

    while not stop.wait(1.0):
        pass
    log("stopping")
    server.shutdown()
    server.server_close()
    if not server.activity.wait_idle(10):
        log("requests still running after 10 s; exiting anyway")
    server.close_connections()
    # Closing the engine can stall on background work; never longer than 10 s.
    closer = threading.Thread(target=engine.close, name="close", daemon=True)
    closer.start()
    closer.join(10)
    sys.stderr.flush()
    sys.stdout.flush()
    # Skips interpreter teardown, which can hang in the engine's own threads.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
