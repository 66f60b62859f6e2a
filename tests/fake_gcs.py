"""A local Google Cloud Storage emulator that the real GCS clients talk to unchanged.

`gs://` paths go through etils.epath to `tf.io.gfile`, whose C++ client speaks HTTPS to
www.googleapis.com (metadata, listings, uploads) and storage.googleapis.com (ranged reads) and
offers no endpoint override. Its libcurl does honour HTTPS_PROXY and CURL_CA_BUNDLE, so this
module runs a proxy that accepts the CONNECT, terminates TLS with a certificate for those hosts
signed by a CA made here, and answers the JSON-API calls from objects on local disk
(`root/<bucket>/<object name>`). The same port serves TensorStore and google-cloud-storage (what
Orbax uses for gs:// directories) and array_record's reader directly, through their endpoint
variables. The clients under test are the real ones; only the server is local. It implements
what readers and Orbax use: object metadata, listings (prefix, delimiter, offsets), ranged and
suffix media reads, media uploads and resumable uploads sent in order, generation preconditions,
rewrite/copy and delete. Not GCS: no pagination, no hierarchical namespace.
"""
from __future__ import annotations

import datetime
import http.server
import json
import os
import socketserver
import ssl
import sys
import threading
import urllib.parse
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
_UPDATED = "2026-01-01T00:00:00.000Z"
_DIR_MARKER = ".gcs-directory-object"  # on disk, the object "a/b/" is the file a/b/<marker>


def _certificates(directory: str) -> tuple[str, str, str]:
  """A CA and a leaf certificate for the Google storage hosts: (ca.pem, leaf.pem, leaf.key)."""
  now = datetime.datetime.now(datetime.timezone.utc)
  valid = dict(not_valid_before=now - datetime.timedelta(days=1),
               not_valid_after=now + datetime.timedelta(days=7))

  def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

  ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
  ca = (x509.CertificateBuilder().subject_name(name("fake-gcs CA")).issuer_name(name("fake-gcs CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256()))
  leaf = (x509.CertificateBuilder().subject_name(name(_HOSTS[0])).issuer_name(ca.subject)
          .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
          .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in _HOSTS]), critical=False)
          .sign(ca_key, hashes.SHA256()))
  paths = tuple(os.path.join(directory, n) for n in ("ca.pem", "leaf.pem", "leaf.key"))
  for path, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM),
                                leaf.public_bytes(serialization.Encoding.PEM),
                                leaf_key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))):
    with open(path, "wb") as f:
      f.write(data)
  return paths


class _Handler(http.server.BaseHTTPRequestHandler):
  """The GCS JSON API over objects in `server.root`: directly (TensorStore, google-cloud-storage)
  or inside a CONNECT tunnel after TLS (TensorFlow). Object generations live in memory."""
  protocol_version = "HTTP/1.1"
  disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms stalls

  def log_message(self, *args):  # keep test output quiet
    pass

  # -- plumbing ------------------------------------------------------------------------------
  def _reply(self, status: int, body: bytes = b"", content_type="application/json", headers=()):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    for key, value in headers:
      self.send_header(key, value)
    self.end_headers()
    self.wfile.write(body)

  def _json(self, status: int, payload: dict):
    self._reply(status, json.dumps(payload).encode())

  def _error(self, status: int, message: str):
    self._json(status, {"error": {"code": status, "message": message}})

  def _body(self) -> bytes:
    if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
      chunks = []
      while size := int(self.rfile.readline().split(b";")[0], 16):
        chunks.append(self.rfile.read(size))
        self.rfile.readline()
      self.rfile.readline()
      return b"".join(chunks)
    return self.rfile.read(int(self.headers.get("Content-Length") or 0))

  def _path(self, bucket: str, name: str) -> str:
    if name.endswith("/"):  # a "directory" placeholder object, as TensorFlow creates them
      return os.path.join(self.server.root, bucket, *name[:-1].split("/"), _DIR_MARKER)
    return os.path.join(self.server.root, bucket, *name.split("/"))

  def _exists(self, bucket: str, name: str) -> bool:
    return bool(name) and os.path.isfile(self._path(bucket, name))

  def _generation(self, bucket: str, name: str) -> int:
    return self.server.generations.get((bucket, name), 1) if self._exists(bucket, name) else 0

  def _resource(self, bucket: str, name: str) -> dict:
    g = str(self._generation(bucket, name))
    return {"kind": "storage#object", "bucket": bucket, "name": name, "generation": g,
            "metageneration": "1", "size": str(os.path.getsize(self._path(bucket, name))),
            "updated": _UPDATED, "timeCreated": _UPDATED, "id": f"{bucket}/{name}/{g}"}

  def _preconditions_fail(self, bucket: str, name: str, query: dict) -> bool:
    """GCS's ifGenerationMatch / ifGenerationNotMatch (0 = the object does not exist)."""
    g = self._generation(bucket, name)
    if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != g:
      self._error(412, f"precondition failed for {bucket}/{name}")
      return True
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == g:
      self._reply(304, headers=[("x-goog-generation", str(g))])
      return True
    return False

  def _store(self, bucket: str, name: str, data: bytes):
    """Writes the object whole (readers never see a partial one) under a new generation."""
    path = self._path(bucket, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "wb") as f:
      f.write(data)
    os.replace(path + ".part", path)
    with self.server.lock:
      self.server.generations[(bucket, name)] = self.server.next_generation
      self.server.next_generation += 1

  def _write(self, bucket: str, name: str, data: bytes):
    self._store(bucket, name, data)
    self._json(200, self._resource(bucket, name))

  def _route(self) -> tuple[list[str], dict]:
    url = urllib.parse.urlsplit(self.path)
    self.server.requests.append((self.command, self.headers.get("Host", "").split(":")[0], url.path))
    return [urllib.parse.unquote(p) for p in url.path.split("/")], dict(urllib.parse.parse_qsl(url.query))

  # -- verbs ---------------------------------------------------------------------------------
  def do_CONNECT(self):  # pylint: disable=invalid-name
    host = self.path.split(":")[0]
    if host not in _HOSTS:
      self._error(403, f"fake GCS proxies only {_HOSTS}")
      return
    self.send_response(200, "Connection established")
    self.end_headers()
    self.wfile.flush()
    try:
      tunnel = self.server.tls.wrap_socket(self.connection, server_side=True)
    except (ssl.SSLError, OSError):
      self.close_connection = True
      return
    _Handler(tunnel, self.client_address, self.server)
    self.close_connection = True

  def do_GET(self):  # pylint: disable=invalid-name
    parts, query = self._route()
    if parts[1:4] != ["storage", "v1", "b"]:  # storage.googleapis.com/<bucket>/<object>
      return self._media(parts[1], "/".join(parts[2:]), query)
    bucket = parts[4]
    if len(parts) == 5:
      return self._json(200, {"kind": "storage#bucket", "name": bucket, "id": bucket,
                              "location": "US"})
    if len(parts) == 6:
      return self._list(bucket, query)
    name = "/".join(parts[6:])
    if query.get("alt") == "media":
      return self._media(bucket, name, query)
    if not self._exists(bucket, name):
      return self._error(404, f"No such object: {bucket}/{name}")
    if not self._preconditions_fail(bucket, name, query):
      self._json(200, self._resource(bucket, name))

  def do_POST(self):  # pylint: disable=invalid-name
    parts, query = self._route()
    data = self._body()
    if parts[1:5] == ["upload", "storage", "v1", "b"]:
      bucket, name = parts[5], query.get("name", "")
      if query.get("uploadType") == "resumable":  # the data follows in PUTs to this session
        session = uuid.uuid4().hex  # requests arrive on several threads at once
        self.server.sessions[session] = dict(bucket=bucket, name=name, query=query,
                                             data=bytearray(), done=False)
        host = self.headers.get("Host", "www.googleapis.com")
        scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
        location = f"{scheme}://{host}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id={session}"
        return self._reply(200, headers=[("Location", location)])
      if query.get("uploadType") != "media":
        return self._error(400, f"fake GCS does not take uploadType={query.get('uploadType')}")
      if not self._preconditions_fail(bucket, name, query):
        self._write(bucket, name, data)
      return None
    if len(parts) >= 11 and parts[5] == "o" and ("rewriteTo" in parts or "copyTo" in parts):
      verb = parts.index("rewriteTo" if "rewriteTo" in parts else "copyTo")
      src_bucket, src = parts[4], "/".join(parts[6:verb])
      dst_bucket, dst = parts[verb + 2], "/".join(parts[verb + 4:])
      if not self._exists(src_bucket, src):
        return self._error(404, f"No such object: {src_bucket}/{src}")
      with open(self._path(src_bucket, src), "rb") as f:
        content = f.read()
      self._store(dst_bucket, dst, content)
      resource = self._resource(dst_bucket, dst)
      return self._json(200, {"kind": "storage#rewriteResponse", "done": True,
                              "objectSize": resource["size"], "totalBytesRewritten": resource["size"],
                              "resource": resource} if "rewriteTo" in parts else resource)
    self._error(400, f"fake GCS does not serve POST {self.path}")

  def do_PUT(self):  # pylint: disable=invalid-name
    """A resumable upload's data ("bytes a-b/total") or a status query ("bytes */total")."""
    _, query = self._route()
    data = self._body()
    session = self.server.sessions.get(query.get("upload_id", ""))
    if session is None:
      return self._error(404, f"no upload session {query.get('upload_id')}")
    spans, total = self.headers.get("Content-Range", "").removeprefix("bytes ").split("/")
    if session["done"]:
      return self._json(200, self._resource(session["bucket"], session["name"]))
    if spans != "*":
      start = int(spans.split("-")[0])
      if start != len(session["data"]):
        return self._error(400, f"upload resumed at {start}, the server has {len(session['data'])}")
      session["data"] += data
    if total != "*" and len(session["data"]) == int(total):
      session["done"] = True
      if not self._preconditions_fail(session["bucket"], session["name"], session["query"]):
        self._write(session["bucket"], session["name"], bytes(session["data"]))
      return None
    received = [("Range", f"bytes=0-{len(session['data']) - 1}")] if session["data"] else []
    return self._reply(308, headers=received)

  def do_DELETE(self):  # pylint: disable=invalid-name
    parts, query = self._route()
    bucket, name = parts[4], "/".join(parts[6:])
    if not self._exists(bucket, name):
      return self._error(404, f"No such object: {bucket}/{name}")
    if self._preconditions_fail(bucket, name, query):
      return None
    os.remove(self._path(bucket, name))
    self._reply(204)

  # -- reads ---------------------------------------------------------------------------------
  def _list(self, bucket: str, query: dict):
    root = os.path.join(self.server.root, bucket)
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter")
    names = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                   .removesuffix(_DIR_MARKER)
                   for d, _, files in os.walk(root) for f in files if not f.endswith(".part"))
    lo, hi = query.get("startOffset", ""), query.get("endOffset")
    items, prefixes = [], set()
    for name in (n for n in names if n.startswith(prefix) and n >= lo and (hi is None or n < hi)):
      rest = name[len(prefix):]
      if delimiter and delimiter in rest:
        prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
      else:
        items.append(self._resource(bucket, name))
    payload = {"kind": "storage#objects", "items": items}
    if prefixes:
      payload["prefixes"] = sorted(prefixes)
    self._json(200, payload)

  def _media(self, bucket: str, name: str, query: dict):
    """The object's bytes, or the span a Range header asks for (read from disk alone)."""
    if not self._exists(bucket, name):
      return self._error(404, f"No such object: gs://{bucket}/{name}")
    if self._preconditions_fail(bucket, name, query):
      return None
    path = self._path(bucket, name)
    size = os.path.getsize(path)
    generation = [("x-goog-generation", str(self._generation(bucket, name)))]
    byte_range = self.headers.get("Range")
    start, end, status, headers = 0, size - 1, 200, generation
    if byte_range:
      first, _, last = byte_range.removeprefix("bytes=").partition("-")
      if first == "":  # suffix range: the last `last` bytes
        start = max(0, size - int(last))
      else:
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
      if start >= size:
        return self._reply(416, headers=[("Content-Range", f"bytes */{size}")] + generation)
      status, headers = 206, [("Content-Range", f"bytes {start}-{end}/{size}")] + generation
    with open(path, "rb") as f:
      f.seek(start)
      data = f.read(end + 1 - start)
    self.server.bytes_served += len(data)
    self._reply(status, data, "application/octet-stream", headers)


class _Server(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True

  def handle_error(self, request, client_address):
    if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):  # clients hang up early
      super().handle_error(request, client_address)


class FakeGcs:
  """Serves `root/<bucket>/<object>` as gs://<bucket>/<object> while it is running.

  `env()` gives the variables that point the GCS clients here; they must be set in the process
  (and inherited by its workers) before the first gs:// access.
  """

  def __init__(self, root: str, cert_dir: str):
    self.ca, leaf, key = _certificates(cert_dir)
    self._server = _Server(("127.0.0.1", 0), _Handler)
    self._server.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self._server.tls.load_cert_chain(leaf, key)
    self._server.root = root
    self._server.requests = []
    self._server.bytes_served = 0
    self._server.generations, self._server.next_generation = {}, 2
    self._server.sessions, self._server.lock = {}, threading.Lock()
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  @property
  def requests(self) -> list[tuple[str, str, str]]:
    """(method, host, path) of every request served so far."""
    return self._server.requests

  @property
  def bytes_served(self) -> int:
    return self._server.bytes_served

  def env(self) -> dict[str, str]:
    proxy = f"http://127.0.0.1:{self._server.server_address[1]}"
    return {"HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": "", "no_proxy": "",
            "CURL_CA_BUNDLE": self.ca, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-gcs-token",
            "GCS_RETRY_CONFIG_MAX_RETRIES": "1",
            # TensorStore (Orbax's arrays) and google-cloud-storage (Orbax's bucket lookups) take
            # an endpoint and speak plain HTTP to it.
            "TENSORSTORE_GCS_HTTP_URL": proxy, "STORAGE_EMULATOR_HOST": proxy,
            # array_record's reader (google-cloud-cpp) likewise.
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": proxy}

  def __enter__(self) -> "FakeGcs":
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._server.server_close()
