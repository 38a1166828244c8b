#!/usr/bin/env python3
"""otlp_collector.py -- a minimal OTLP trace receiver (HTTP and gRPC) writing spans as JSON lines.

    python otlp_collector.py [--port 4318] [--grpc-port N] [--host 127.0.0.1] --out spans.jsonl

Accepts POST /v1/traces with Content-Type application/x-protobuf (Content-Encoding gzip or
identity), decodes the ExportTraceServiceRequest and appends one JSON line per span to --out:

    {"trace_id": "<32 lowercase hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex or ''>",
     "name": "...", "kind": <int>, "start_unix_ns": N, "end_unix_ns": N,
     "attributes": {key: value}, "resource": {key: value}, "scope": "<instrumentation scope>",
     "events": [{"name", "time_unix_ns", "attributes"}],
     "links": [{"trace_id", "span_id", "attributes"}],
     "status": {"code": <0 unset, 1 ok, 2 error>, "message": "..."}, "transport": "http"|"grpc"}

Attribute values are plain JSON: strings, numbers, bools; arrays become lists, key-value lists
objects, bytes lowercase hex. The file is flushed after every request. Each export is answered
200 with an empty ExportTraceServiceResponse (application/x-protobuf). Other paths: 404; other
content types (OTLP/JSON included): 415; undecodable bodies: 400. On start one JSON line
{"pid": PID, "port": PORT, "grpc_port": PORT or null} goes to stdout (--port 0 picks a free port).

With --grpc-port it also serves the OTLP/gRPC TraceService (gzip accepted) on that port (0: a
free one); that needs the `grpcio` package too.

Needs a Python with the `opentelemetry-proto` package (and its `protobuf`). The vLLM venv that
scripts/engine.sh builds has it (~/.cache/inferscope/vllm-cpu/venv). When the running Python
lacks it, this script re-executes itself with $OTLP_PYTHON, else with that venv's python, when
one of them exists; otherwise it exits 1 saying what to install.
"""
import argparse
import gzip
import json
import os
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 64 * 1024 * 1024


def _import_trace_service():
    try:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        return trace_service_pb2
    except ImportError as e:
        err = e
    root = os.environ.get("ROOT") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "inferscope", "vllm-cpu")
    candidates = [os.environ.get("OTLP_PYTHON"), os.path.join(root, "venv", "bin", "python")]
    if not os.environ.get("_OTLP_COLLECTOR_REEXEC"):
        for py in candidates:
            # a venv's python is a symlink to the base interpreter: compare paths, not targets
            if py and os.access(py, os.X_OK) and os.path.abspath(py) != os.path.abspath(
                    sys.executable):
                os.environ["_OTLP_COLLECTOR_REEXEC"] = "1"
                os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])
    sys.stderr.write(
        "otlp_collector: cannot import opentelemetry.proto (%s); run it with a Python that has "
        "the opentelemetry-proto package (pip install opentelemetry-proto), e.g. "
        "~/.cache/inferscope/vllm-cpu/venv/bin/python, or set OTLP_PYTHON\n" % err)
    sys.exit(1)


trace_service_pb2 = _import_trace_service()


def any_value(v):
    """An OTLP AnyValue as a plain JSON value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)  # string_value, bool_value, int_value, double_value


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def spans_of(req, transport):
    """Yield one dict per span of an ExportTraceServiceRequest."""
    for rs in req.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": int(s.kind),
                    "start_unix_ns": int(s.start_time_unix_nano),
                    "end_unix_ns": int(s.end_time_unix_nano),
                    "attributes": attributes(s.attributes),
                    "resource": resource,
                    "scope": ss.scope.name,
                    "events": [{"name": e.name, "time_unix_ns": int(e.time_unix_nano),
                                "attributes": attributes(e.attributes)} for e in s.events],
                    "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex(),
                               "attributes": attributes(l.attributes)} for l in s.links],
                    "status": {"code": int(s.status.code), "message": s.status.message},
                    "transport": transport,
                }


def record(req, transport):
    """Appends the spans of one export to the output file."""
    lines = "".join(json.dumps(s, separators=(",", ":")) + "\n" for s in spans_of(req, transport))
    with Handler.lock:
        Handler.out.write(lines)
        Handler.out.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    out = None  # the open output file
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _reply(self, code, body=b"", ctype="application/x-protobuf"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code, message):
        self._reply(code, json.dumps({"error": message}).encode(), "application/json")

    def do_GET(self):
        self._error(404 if self.path.split("?")[0] != "/v1/traces" else 405, "POST /v1/traces")

    def do_POST(self):
        try:
            n = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            return self._error(411 if n < 0 else 413, "a Content-Length up to %d" % MAX_BODY)
        body = self.rfile.read(n)
        if self.path.split("?")[0] != "/v1/traces":
            return self._error(404, "only POST /v1/traces")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/x-protobuf":
            return self._error(415, "only application/x-protobuf is accepted")
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                return self._error(415, "unsupported Content-Encoding %s" % encoding)
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
        except Exception as e:  # gzip/zlib/protobuf decode errors
            return self._error(400, "cannot decode the request: %s" % e)
        record(req, "http")
        self._reply(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_grpc(host, port):
    """Serves the OTLP/gRPC TraceService; returns (server, bound port)."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            record(request, "grpc")
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", MAX_BODY)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    bound = server.add_insecure_port("%s:%d" % (host, port))
    server.start()
    return server, bound


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=4318, help="TCP port (0 picks a free one)")
    ap.add_argument("--grpc-port", type=int, default=None,
                    help="also serve OTLP/gRPC on this port (0 picks a free one)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--out", required=True, help="JSON-lines file to append spans to")
    args = ap.parse_args()
    Handler.out = open(args.out, "a", encoding="utf-8")
    srv = Server((args.host, args.port), Handler)
    grpc_server, grpc_port = (None, None)
    if args.grpc_port is not None:
        grpc_server, grpc_port = start_grpc(args.host, args.grpc_port)
    sys.stdout.write(json.dumps({"pid": os.getpid(), "port": srv.server_address[1],
                                 "grpc_port": grpc_port}) + "\n")
    sys.stdout.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if grpc_server is not None:
            grpc_server.stop(1)
        srv.server_close()
        Handler.out.close()


if __name__ == "__main__":
    main()
