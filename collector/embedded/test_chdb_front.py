"""Tests for chdb_front.py: a real front process over a temporary data dir.

Run with the venv that has requirements.txt installed:
    python -m unittest discover -s collector/embedded -p 'test_*.py'
Set CHDB_FRONT_BENCH=1 to also run the insert throughput measurement.
"""

import array
import http.client
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid

import lz4.block
from clickhouse_cityhash.cityhash import CityHash128

FRONT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chdb_front.py")
M64 = (1 << 64) - 1


# -- wire encoders, written independently of the front ----------------------


def varuint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def rb_string(value):
    data = value.encode() if isinstance(value, str) else value
    return varuint(len(data)) + data


def rbwnat_header(columns):
    """RowBinaryWithNamesAndTypes header, as the crate writes it."""
    return (varuint(len(columns)) + b"".join(rb_string(n) for n, _ in columns)
            + b"".join(rb_string(t) for _, t in columns))


def native_block(raw, method=0x82):
    """One ClickHouse native compressed block (what the crate sends with decompress=1)."""
    payload = lz4.block.compress(raw, store_size=False) if method == 0x82 else raw
    header = struct.pack("<BII", method, 9 + len(payload), len(raw))
    digest = CityHash128(header + payload)
    return struct.pack("<QQ", digest >> 64, digest & M64) + header + payload


def split_every(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


SAMPLE_COLUMNS = [
    ("id", "UInt64"),
    ("name", "String"),
    ("score", "Float64"),
    ("ts", "DateTime64(9, 'UTC')"),
    ("tags", "Array(String)"),
    ("attrs", "Map(LowCardinality(String), String)"),
]
SAMPLE_DDL = ("CREATE TABLE {table} (id UInt64, name String, score Float64, "
              "ts DateTime64(9, 'UTC'), tags Array(String), "
              "attrs Map(LowCardinality(String), String)) ENGINE = MergeTree ORDER BY id")


def sample_row(i, tag="t"):
    name = f"row-{i}-\t'quote'\\ é"
    tags = [f"{tag}{i % 7}", "x" * (i % 5)]
    attrs = {"k1": f"v{i}", "service": f"svc-{i % 3}"}
    values = (i, name, i * 0.5, 1_700_000_000_123_456_789 + i, tags, attrs)
    encoded = (struct.pack("<Q", i) + rb_string(name) + struct.pack("<d", i * 0.5)
               + struct.pack("<q", values[3]) + varuint(len(tags))
               + b"".join(rb_string(t) for t in tags) + varuint(len(attrs))
               + b"".join(rb_string(k) + rb_string(v) for k, v in attrs.items()))
    return values, encoded


def lz4_chunked_body(raw, block_size=256 * 1024, http_chunk=65536):
    """Native blocks of ~block_size raw bytes, re-cut into HTTP chunks that do
    not line up with block boundaries (as TCP and hyper may deliver them)."""
    compressed = b"".join(native_block(part) for part in split_every(raw, block_size))
    return split_every(compressed, http_chunk)


# -- the front process ------------------------------------------------------


class Front:
    def __init__(self, data_dir):
        self.stderr_path = os.path.join(os.path.dirname(data_dir), "front.stderr")
        self.stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, FRONT, "--data-dir", data_dir, "--port", "0"],
            stdout=subprocess.PIPE, stderr=self.stderr)
        ready, _, _ = select.select([self.proc.stdout], [], [], 90)
        if not ready:
            self.proc.kill()
            raise RuntimeError("front did not start within 90 s")
        line = self.proc.stdout.readline().decode()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"unexpected first line {line!r}")
        self.port = int(line.split()[1])

    def connection(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def request(self, method="POST", params=None, body=None, headers=None, conn=None,
                chunked=False):
        own = conn is None
        conn = conn or self.connection()
        path = "/?" + urllib.parse.urlencode(params) if params else "/"
        headers = dict(headers or {})
        try:
            conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            if own:
                conn.close()

    def query(self, sql, **params):
        status, headers, body = self.request(body=sql.encode(), params=params)
        if status != 200:
            raise AssertionError(f"{sql!r} failed with {status}: {body!r}")
        return body

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self.proc.stdout.close()
            self.stderr.close()


class FrontTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="chdb-front-test-")
        cls.front = Front(os.path.join(cls.tmp, "data"))

    @classmethod
    def tearDownClass(cls):
        try:
            code = cls.front.stop()
            assert code == 0, f"front exited with {code} on SIGTERM"
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def table(self, ddl=SAMPLE_DDL):
        name = "t_" + uuid.uuid4().hex[:12]
        self.front.query(ddl.format(table=name))
        return name

    def insert_lz4(self, table, columns, rows_bytes, settings=None, conn=None, http_chunk=65536):
        names = ", ".join(n for n, _ in columns)
        params = {"query": f"INSERT INTO {table}({names}) FORMAT RowBinaryWithNamesAndTypes",
                  "decompress": "1", **(settings or {})}
        raw = rbwnat_header(columns) + rows_bytes
        return self.front.request(params=params, body=iter(lz4_chunked_body(raw, http_chunk=http_chunk)),
                                  headers={"Transfer-Encoding": "chunked"}, chunked=True, conn=conn)

    def assertClickHouseError(self, result, code, status=None):
        got_status, headers, body = result
        self.assertEqual(headers.get("X-ClickHouse-Exception-Code"), str(code), body)
        self.assertTrue(body.startswith(f"Code: {code}. DB::Exception: ".encode()), body)
        self.assertNotIn(b"DB::Exception: Code:", body)  # chdb's doubled prefix is stripped
        if status is not None:
            self.assertEqual(got_status, status, body)
        else:
            self.assertGreaterEqual(got_status, 400)

    # -- basics

    def test_ping_and_root(self):
        for path in ("/ping", "/"):
            conn = self.front.connection()
            conn.request("GET", path)
            response = conn.getresponse()
            self.assertEqual((response.status, response.read()), (200, b"Ok.\n"))
            conn.close()

    def test_version(self):
        status, _, body = self.front.request("GET", params={"query": "SELECT version()"})
        self.assertEqual(status, 200)
        self.assertRegex(body.decode(), r"^\d+\.\d+\.\d+\.\d+\n$")
        self.assertTrue(body.startswith(b"26.9."), body)

    def test_default_format_and_sql_format(self):
        self.assertEqual(self.front.query("SELECT 1 AS a, 'x' AS b"), b"1\tx\n")
        self.assertEqual(self.front.query("SELECT 1 AS a", default_format="JSONEachRow"),
                         b'{"a":1}\n')
        self.assertEqual(self.front.query("SELECT 1 AS a FORMAT CSVWithNames",
                                          default_format="JSONEachRow"), b'"a"\n1\n')

    def test_query_param_and_body_are_concatenated(self):
        status, _, body = self.front.request(params={"query": "SELECT 40 +"}, body=b"2")
        self.assertEqual((status, body), (200, b"42\n"))

    # -- DDL and databases

    def test_ddl_lifecycle(self):
        db = "db_" + uuid.uuid4().hex[:8]
        self.assertEqual(self.front.query(f"CREATE DATABASE {db}"), b"")
        for sql in ("CREATE TABLE events (id UInt64, msg String) ENGINE = MergeTree ORDER BY id",
                    "ALTER TABLE events ADD COLUMN level LowCardinality(String) DEFAULT 'info'",
                    "CREATE MATERIALIZED VIEW counts ENGINE = SummingMergeTree ORDER BY level "
                    "AS SELECT level, count() AS n FROM events GROUP BY level",
                    "INSERT INTO events (id, msg) VALUES (1, 'a'), (2, 'b')",
                    "OPTIMIZE TABLE events FINAL",
                    "SYSTEM FLUSH LOGS"):
            status, headers, body = self.front.request(params={"database": db}, body=sql.encode())
            self.assertEqual((status, body), (200, b""), sql)
            self.assertNotIn("X-ClickHouse-Exception-Code", headers)
        self.assertEqual(self.front.query("SELECT id, msg, level FROM events ORDER BY id",
                                          database=db), b"1\ta\tinfo\n2\tb\tinfo\n")
        self.assertEqual(self.front.query(f"SELECT level, sum(n) FROM {db}.counts GROUP BY level"),
                         b"info\t2\n")
        describe = self.front.query("DESCRIBE TABLE events", database=db,
                                    describe_include_subcolumns="0", default_format="TSV")
        self.assertEqual([line.split("\t")[:2] for line in describe.decode().splitlines()],
                         [["id", "UInt64"], ["msg", "String"], ["level", "LowCardinality(String)"]])
        self.assertEqual(self.front.query(f"EXISTS TABLE {db}.events"), b"1\n")
        self.assertEqual(self.front.query(f"SHOW TABLES FROM {db} NOT LIKE '.inner%'"),
                         b"counts\nevents\n")
        self.assertEqual(self.front.query("TRUNCATE TABLE events", database=db), b"")
        self.assertEqual(self.front.query(f"SELECT count() FROM {db}.events"), b"0\n")
        self.assertEqual(self.front.query(f"DROP TABLE {db}.events"), b"")
        self.assertEqual(self.front.query(f"EXISTS TABLE {db}.events"), b"0\n")

    def test_request_without_database_runs_in_default(self):
        db = "d_" + uuid.uuid4().hex[:12]
        self.front.query(f"CREATE DATABASE {db}")
        try:
            # The pool hands the connection that just ran in `db` to the next request.
            self.assertEqual(self.front.query("SELECT currentDatabase()", database=db),
                             f"{db}\n".encode())
            self.assertEqual(self.front.query("SELECT currentDatabase()"), b"default\n")
        finally:
            self.front.query(f"DROP DATABASE {db}")

    def test_unknown_database(self):
        result = self.front.request(params={"database": "no_such_db"}, body=b"SELECT 1")
        self.assertClickHouseError(result, 81, 404)

    # -- inserts

    def test_describe_like_the_crate(self):
        table = self.table()
        status, _, body = self.front.request(
            params={"default_format": "RowBinaryWithNamesAndTypes",
                    "describe_include_subcolumns": "0"},
            body=f"DESCRIBE TABLE {table}".encode())
        self.assertEqual(status, 200)
        header = rbwnat_header([(n, "String") for n in (
            "name", "type", "default_type", "default_expression", "comment",
            "codec_expression", "ttl_expression")])
        self.assertTrue(body.startswith(header), body[:200])
        rows = b"".join(rb_string(n) + rb_string(t) + b"\x00" * 5 for n, t in SAMPLE_COLUMNS)
        self.assertEqual(body[len(header):], rows)

    def test_lz4_chunked_rowbinary_insert_round_trips(self):
        table = self.table()
        rows = [sample_row(i) for i in range(20_000)]  # several 256 KiB blocks
        data = b"".join(encoded for _, encoded in rows)
        status, headers, body = self.insert_lz4(table, SAMPLE_COLUMNS, data, http_chunk=7777)
        self.assertEqual((status, body), (200, b""))
        summary = json.loads(headers["X-ClickHouse-Summary"])
        self.assertEqual(summary["written_rows"], "20000")

        # Reading back in the same format must give the very bytes that were sent.
        status, _, back = self.front.request(
            params={"default_format": "RowBinaryWithNamesAndTypes"},
            body=f"SELECT * FROM {table} ORDER BY id".encode())
        self.assertEqual(status, 200)
        self.assertEqual(back, rbwnat_header(SAMPLE_COLUMNS) + data)

        line = self.front.query(f"SELECT id, name, score, toUnixTimestamp64Nano(ts), tags, "
                                f"attrs['service'] FROM {table} WHERE id = 12345 "
                                "FORMAT JSONEachRow SETTINGS output_format_json_quote_64bit_integers=0")
        values = rows[12345][0]
        self.assertEqual(json.loads(line), {
            "id": 12345, "name": values[1], "score": values[2],
            "toUnixTimestamp64Nano(ts)": values[3], "tags": values[4],
            "arrayElement(attrs, 'service')": values[5]["service"]})

    def test_crate_lz4_test_vector(self):
        # clickhouse-0.15.3 src/compression/lz4/mod.rs `it_compresses`: the exact
        # bytes the crate produces, so checksum byte order is pinned to the crate.
        source = bytes([1, 0, 2, 255, 255, 255, 255, 0, 1, 1, 1, 115, 6, 83, 116, 114, 105,
                        110, 103, 3, 97, 98, 99])
        expected = bytes([245, 5, 222, 235, 225, 158, 59, 108, 225, 31, 65, 215, 66, 66, 36, 92,
                          130, 34, 0, 0, 0, 23, 0, 0, 0, 240, 8, 1, 0, 2, 255, 255, 255, 255, 0,
                          1, 1, 1, 115, 6, 83, 116, 114, 105, 110, 103, 3, 97, 98, 99])
        self.assertEqual(native_block(source), expected)
        table = self.table("CREATE TABLE {table} (b String) ENGINE = Memory")
        status, _, body = self.front.request(
            params={"query": f"INSERT INTO {table} FORMAT RawBLOB", "decompress": "1"},
            body=expected)
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(self.front.query(f"SELECT hex(b) FROM {table}"),
                         source.hex().upper().encode() + b"\n")

    def test_plain_and_other_encodings(self):
        table = self.table("CREATE TABLE {table} (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
        insert = {"query": f"INSERT INTO {table} FORMAT JSONEachRow"}
        status, _, _ = self.front.request(params=insert, body=b'{"a":1,"s":"one"}\n')
        self.assertEqual(status, 200)
        import gzip
        status, _, _ = self.front.request(params=insert, body=gzip.compress(b'{"a":2,"s":"two"}\n'),
                                          headers={"Content-Encoding": "gzip"})
        self.assertEqual(status, 200)
        status, _, _ = self.front.request(
            params={"query": f"INSERT INTO {table} FORMAT TSV", "decompress": "1"},
            body=native_block(b"3\tthree\n", method=0x02))
        self.assertEqual(status, 200)
        self.assertEqual(self.front.query(f"SELECT a, s FROM {table} ORDER BY a"),
                         b"1\tone\n2\ttwo\n3\tthree\n")

    def test_bad_checksum_is_400_and_server_keeps_serving(self):
        table = self.table()
        columns = SAMPLE_COLUMNS
        raw = rbwnat_header(columns) + b"".join(sample_row(i)[1] for i in range(100))
        block = bytearray(native_block(raw))
        block[3] ^= 0xFF
        conn = self.front.connection()
        params = {"query": f"INSERT INTO {table} FORMAT RowBinaryWithNamesAndTypes",
                  "decompress": "1"}
        result = self.front.request(params=params, body=iter(split_every(bytes(block), 1000)),
                                    headers={"Transfer-Encoding": "chunked"}, chunked=True,
                                    conn=conn)
        self.assertClickHouseError(result, 40, 400)
        self.assertIn(b"Checksum doesn't match", result[2])
        # Same keep-alive connection, then a fresh one.
        self.assertEqual(self.front.request(body=f"SELECT count() FROM {table}".encode(),
                                            conn=conn)[2], b"0\n")
        conn.close()
        status, _, body = self.insert_lz4(table, columns, sample_row(7)[1])
        self.assertEqual(status, 200, body)
        self.assertEqual(self.front.query(f"SELECT id FROM {table}"), b"7\n")

    def test_malformed_chunking_is_400(self):
        conn = self.front.connection()
        conn.putrequest("POST", "/?query=SELECT+1")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        conn.send(b"zz\r\nhello\r\n0\r\n\r\n")
        response = conn.getresponse()
        body = response.read()
        self.assertEqual(response.status, 400)
        self.assertEqual(response.getheader("X-ClickHouse-Exception-Code"), "33")
        self.assertEqual(response.getheader("Connection"), "close")
        self.assertIn(b"chunked", body)
        conn.close()
        self.assertEqual(self.front.query("SELECT 2"), b"2\n")

    def test_truncated_lz4_block_is_400(self):
        table = self.table("CREATE TABLE {table} (a UInt8) ENGINE = Memory")
        block = native_block(b"1\n2\n")
        result = self.front.request(
            params={"query": f"INSERT INTO {table} FORMAT TSV", "decompress": "1"},
            body=block[:-3])
        self.assertClickHouseError(result, 33, 400)
        self.assertEqual(self.front.query(f"SELECT count() FROM {table}"), b"0\n")

    def test_insert_data_error_reports_engine_error(self):
        table = self.table("CREATE TABLE {table} (a UInt8) ENGINE = MergeTree ORDER BY a")
        result = self.front.request(params={"query": f"INSERT INTO {table} FORMAT TSV"},
                                    body=b"1\nnot-a-number\n")
        self.assertClickHouseError(result, 27, 400)
        self.assertEqual(self.front.query(f"SELECT count() FROM {table}"), b"0\n")
        result = self.front.request(params={"query": "INSERT INTO no_such_table FORMAT TSV"},
                                    body=b"1\n")
        self.assertClickHouseError(result, 60, 404)

    def test_rows_the_engine_refuses_are_an_error_not_a_silent_success(self):
        # chdb's streaming inserter answered these with success and wrote nothing.
        table = self.table("CREATE TABLE {table} (s String, d Date, "
                           "CONSTRAINT no_p CHECK s != 'p') "
                           "ENGINE = MergeTree PARTITION BY d ORDER BY s")
        result = self.front.request(params={"query": f"INSERT INTO {table} FORMAT TSV"},
                                    body=b"ok\t2026-01-01\np\t2026-01-01\n")
        self.assertClickHouseError(result, 469)
        days = b"".join(b"x\t%d-%02d-%02d\n" % (2026, 1 + i // 28, 1 + i % 28)
                        for i in range(101))
        result = self.front.request(params={"query": f"INSERT INTO {table} FORMAT TSV"},
                                    body=days)
        self.assertClickHouseError(result, 252)
        self.assertEqual(self.front.query(f"SELECT count() FROM {table}"), b"0\n")

    # -- settings

    def test_unknown_setting_is_code_115(self):
        result = self.front.request(params={"no_such_setting_xyz": "1"}, body=b"SELECT 1")
        self.assertClickHouseError(result, 115)
        self.assertIn(b"no_such_setting_xyz", result[2])
        table = self.table("CREATE TABLE {table} (a UInt8) ENGINE = Memory")
        result = self.front.request(
            params={"query": f"INSERT INTO {table} FORMAT TSV", "no_such_setting_xyz": "1"},
            body=b"1\n")
        self.assertClickHouseError(result, 115)
        self.assertEqual(self.front.query(f"SELECT count() FROM {table}"), b"0\n")

    def test_settings_apply_per_request_and_do_not_leak(self):
        for _ in range(3):
            self.assertEqual(self.front.query("SELECT getSetting('max_block_size')",
                                              max_block_size="1234"), b"1234\n")
            self.assertEqual(self.front.query("SELECT getSetting('max_block_size')"), b"65409\n")
        # Accepted-and-ignored request parameters are not settings.
        status, _, body = self.front.request(
            params={"session_id": "s1", "query_id": "q1", "user": "default", "password": "",
                    "role": "r"}, body=b"SELECT 3",
            headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": "secret"})
        self.assertEqual((status, body), (200, b"3\n"))

    def test_max_execution_time(self):
        result = self.front.request(
            params={"max_execution_time": "0.5", "timeout_overflow_mode": "throw"},
            body=b"SELECT sum(sipHash64(number)) FROM numbers(1000000000000)")
        self.assertClickHouseError(result, 159)

    def test_insert_deduplication_token(self):
        table = self.table("CREATE TABLE {table} (id UInt64, name String) ENGINE = MergeTree "
                           "ORDER BY id SETTINGS non_replicated_deduplication_window = 100")
        columns = [("id", "UInt64"), ("name", "String")]
        rows = b"".join(struct.pack("<Q", i) + rb_string(f"n{i}") for i in range(500))
        for token in ("token-a", "token-a", "token-b"):
            status, _, body = self.insert_lz4(table, columns, rows,
                                              settings={"insert_deduplication_token": token})
            self.assertEqual(status, 200, body)
        self.assertEqual(self.front.query(f"SELECT count(), uniqExact(id) FROM {table}"),
                         b"1000\t500\n")

    def test_async_insert_settings_are_accepted(self):
        table = self.table("CREATE TABLE {table} (id UInt64) ENGINE = MergeTree ORDER BY id")
        status, _, body = self.insert_lz4(
            table, [("id", "UInt64")], struct.pack("<3Q", 1, 2, 3),
            settings={"async_insert": "1", "wait_for_async_insert": "1"})
        self.assertEqual(status, 200, body)
        self.assertEqual(self.front.query(f"SELECT sum(id) FROM {table}"), b"6\n")

    # -- query parameters

    def test_multipart_params(self):
        boundary = "clickhouse-rs-boundary-AbCdEf0123456789"
        fields = [("query", "SELECT {s:String} AS s, {n:UInt32} * 2 AS n, {a:Array(String)} AS a, "
                            "{maybe:Nullable(Int8)} AS m FORMAT JSONEachRow"),
                  # Values escaped the way the crate's ParamSerializer escapes them.
                  ("param_s", "it\\'s a \\\\ tab\\there"),
                  ("param_n", "21"),
                  ("param_a", "['x','y\\'z']"),
                  ("param_maybe", "\\N")]
        body = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\n{v}\r\n"
                       for n, v in fields) + f"--{boundary}--\r\n"
        status, _, out = self.front.request(
            body=body.encode(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        self.assertEqual(status, 200, out)
        self.assertEqual(json.loads(out), {"s": "it's a \\ tab\there", "n": 42, "a": ["x", "y'z"],
                                           "m": None})

    def test_missing_param_is_an_error(self):
        result = self.front.request(body=b"SELECT {x:UInt8}")
        self.assertClickHouseError(result, 456)

    # -- results

    def test_empty_result_still_has_rowbinary_header(self):
        status, headers, body = self.front.request(
            params={"default_format": "RowBinaryWithNamesAndTypes"},
            body=b"SELECT number, toString(number) AS s FROM numbers(10) WHERE number > 100")
        self.assertEqual(status, 200)
        self.assertEqual(body, rbwnat_header([("number", "UInt64"), ("s", "String")]))
        status, _, body = self.front.request(
            params={"default_format": "RowBinary"}, body=b"SELECT 1 WHERE 0")
        self.assertEqual((status, body), (200, b""))

    def test_large_result_is_intact(self):
        n = 1_000_000
        status, headers, body = self.front.request(
            params={"default_format": "RowBinaryWithNamesAndTypes"},
            body=f"SELECT number FROM numbers({n})".encode())
        self.assertEqual(status, 200)
        header = rbwnat_header([("number", "UInt64")])
        self.assertEqual(body[:len(header)], header)
        self.assertEqual(len(body), len(header) + 8 * n)
        self.assertEqual(body[len(header):], array.array("Q", range(n)).tobytes())

        status, _, body = self.front.request(
            params={"default_format": "TSVWithNames"},
            body=b"SELECT number, toString(number * 3) AS s FROM numbers(300000)")
        lines = body.decode().split("\n")
        self.assertEqual(lines[0], "number\ts")
        self.assertEqual(lines[1:-1], [f"{i}\t{i * 3}" for i in range(300000)])
        self.assertEqual(lines[-1], "")

    def test_results_that_do_not_concatenate_are_whole(self):
        body = self.front.query("SELECT number FROM numbers(200000)", default_format="JSONEachRow",
                                output_format_json_array_of_rows="1")
        self.assertEqual(json.loads(body), [{"number": i} for i in range(200000)])
        body = self.front.query("SELECT number % 2 AS k, count() AS c FROM numbers(200000) "
                                "GROUP BY k WITH TOTALS ORDER BY k FORMAT JSONCompact")
        parsed = json.loads(body)
        self.assertEqual((parsed["data"], parsed["totals"]), ([[0, 100000], [1, 100000]],
                                                              [0, 200000]))

    def test_compress_1_answers_native_lz4_blocks(self):
        status, _, body = self.front.request(
            params={"compress": "1", "default_format": "RowBinary"},
            body=b"SELECT number FROM numbers(300000)")
        self.assertEqual(status, 200)
        raw, pos = b"", 0
        while pos < len(body):
            method, size, raw_size = struct.unpack_from("<BII", body, pos + 16)
            block = body[pos + 16:pos + 16 + size]
            digest = CityHash128(block)
            self.assertEqual(body[pos:pos + 16], struct.pack("<QQ", digest >> 64, digest & M64))
            self.assertEqual(method, 0x82)
            raw += lz4.block.decompress(block[9:], uncompressed_size=raw_size)
            pos += 16 + size
        self.assertEqual(raw, array.array("Q", range(300000)).tobytes())

    def test_error_after_streaming_started_uses_exception_tag(self):
        status, headers, body = self.front.request(
            body=b"SELECT throwIf(number = 300000, 'boom') FROM numbers(1000000)")
        self.assertEqual(status, 200)
        tag = headers["X-ClickHouse-Exception-Tag"].encode()
        self.assertTrue(body.endswith(b" " + tag + b"\r\n__exception__\r\n"), body[-300:])
        # Decode the way the crate's extract_exception_new() does.
        rem = body[:-len(b" " + tag + b"\r\n__exception__\r\n")]
        length_start = rem.rindex(b"\n") + 1
        length = int(rem[length_start:])
        message = rem[length_start - length:length_start]
        self.assertTrue(rem[:length_start - length].endswith(b"\r\n__exception__\r\n" + tag + b"\r\n"))
        self.assertTrue(message.startswith(b"Code: 395. DB::Exception: "), message)
        self.assertIn(b"boom", message)
        # Rows before the failure were streamed intact.
        self.assertTrue(body.startswith(b"0\n" * 1000))

    def test_engine_errors(self):
        self.assertClickHouseError(self.front.request(body=b"SELEC 1"), 62, 400)
        self.assertClickHouseError(self.front.request(body=b"SELECT * FROM no_such_table_q"), 60, 404)
        self.assertClickHouseError(self.front.request(body=b"SELECT 1 FORMAT NoSuchFormat"), 73, 404)

    # -- concurrency

    def test_concurrent_inserts_all_land(self):
        table = self.table()
        threads, batches, per_batch = 6, 4, 3000
        errors = []

        def worker(t):
            try:
                conn = self.front.connection()
                for b in range(batches):
                    base = (t * batches + b) * per_batch
                    data = b"".join(sample_row(base + i, tag=f"w{t}")[1] for i in range(per_batch))
                    status, _, body = self.insert_lz4(table, SAMPLE_COLUMNS, data, conn=conn)
                    if status != 200:
                        errors.append(body)
                    # A query on the same keep-alive connection between inserts.
                    self.front.request(body=f"SELECT count() FROM {table}".encode(), conn=conn)
                conn.close()
            except Exception as exc:  # noqa: BLE001 - reported through the list
                errors.append(repr(exc))

        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(300)
        self.assertEqual(errors, [])
        total = threads * batches * per_batch
        self.assertEqual(self.front.query(f"SELECT count(), uniqExact(id), sum(id) FROM {table}"),
                         f"{total}\t{total}\t{total * (total - 1) // 2}\n".encode())
        self.assertEqual(self.front.query(
            f"SELECT count() FROM {table} WHERE name = concat('row-', toString(id), "
            "'-\\t\\'quote\\'\\\\ é')"), f"{total}\n".encode())

    @unittest.skipUnless(os.environ.get("CHDB_FRONT_BENCH"), "set CHDB_FRONT_BENCH=1 to measure")
    def test_insert_throughput(self):
        """~300-byte rows in the crate's shape: RBWNAT, 256 KiB LZ4 blocks, chunked."""
        ddl = ("CREATE TABLE {table} (Timestamp DateTime64(9), TraceId String, SpanId String, "
               "SeverityText LowCardinality(String), ServiceName LowCardinality(String), "
               "Body String, LogAttributes Map(LowCardinality(String), String)) "
               "ENGINE = MergeTree ORDER BY (ServiceName, Timestamp)")
        columns = [("Timestamp", "DateTime64(9)"), ("TraceId", "String"), ("SpanId", "String"),
                   ("SeverityText", "LowCardinality(String)"),
                   ("ServiceName", "LowCardinality(String)"), ("Body", "String"),
                   ("LogAttributes", "Map(LowCardinality(String), String)")]
        rows_per_request, requests, parallel = 50_000, 4, int(os.environ.get("CHDB_FRONT_BENCH_PAR", 2))

        def row(i):
            attrs = {"http.method": "GET", "http.route": f"/api/v1/items/{i % 100}",
                     "http.status_code": "200"}
            return (struct.pack("<q", 1_700_000_000_000_000_000 + i)
                    + rb_string(uuid.UUID(int=i).hex) + rb_string(f"{i:016x}")
                    + rb_string("INFO") + rb_string(f"service-{i % 5}")
                    + rb_string(f"request {i} handled in {i % 1000} ms by worker " + "x" * 120)
                    + varuint(len(attrs)) + b"".join(rb_string(k) + rb_string(v) for k, v in attrs.items()))

        data = b"".join(row(i) for i in range(rows_per_request))
        bodies = lz4_chunked_body(rbwnat_header(columns) + data, http_chunk=256 * 1024 + 25)
        table = self.table(ddl)

        def send(_):
            conn = self.front.connection()
            for _ in range(requests):
                status, _, body = self.insert_lz4_raw(table, columns, bodies, conn)
                assert status == 200, body
            conn.close()

        started = time.monotonic()
        workers = [threading.Thread(target=send, args=(p,)) for p in range(parallel)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.monotonic() - started
        total = rows_per_request * requests * parallel
        self.assertEqual(self.front.query(f"SELECT count() FROM {table}"), f"{total}\n".encode())
        print(f"\ninsert throughput: {total / elapsed:,.0f} rows/s ({len(data) / rows_per_request:.0f}"
              f" B/row, {total} rows, {parallel} parallel requests, {elapsed:.2f} s)", file=sys.stderr)

    def insert_lz4_raw(self, table, columns, chunks, conn):
        names = ", ".join(n for n, _ in columns)
        params = {"query": f"INSERT INTO {table}({names}) FORMAT RowBinaryWithNamesAndTypes",
                  "decompress": "1"}
        return self.front.request(params=params, body=iter(chunks), conn=conn, chunked=True,
                                  headers={"Transfer-Encoding": "chunked"})


class LifecycleTest(unittest.TestCase):
    def test_exit_on_stdin_close(self):
        tmp = tempfile.mkdtemp(prefix="chdb-front-life-")
        try:
            proc = subprocess.Popen(
                [sys.executable, FRONT, "--data-dir", os.path.join(tmp, "data"),
                 "--exit-on-stdin-close"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            ready, _, _ = select.select([proc.stdout], [], [], 90)
            self.assertTrue(ready, "front did not start")
            port = int(proc.stdout.readline().split()[1])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/?query=SELECT+41%2B1")
            self.assertEqual(conn.getresponse().read(), b"42\n")
            conn.close()
            proc.stdin.close()
            self.assertEqual(proc.wait(30), 0)
            proc.stdout.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
