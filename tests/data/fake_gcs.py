"""A local Google Cloud Storage emulator that TensorFlow's own GCS client talks to unchanged.

`gs://` paths go through etils.epath to `tf.io.gfile`, whose C++ client speaks HTTPS to
www.googleapis.com (metadata, listings) and storage.googleapis.com (ranged reads) and offers no
endpoint override. Its libcurl does honour HTTPS_PROXY and CURL_CA_BUNDLE, so this module runs a
proxy that accepts the CONNECT, terminates TLS with a certificate for those hosts signed by a CA
made here, and answers the few JSON-API calls a reader makes from objects on local disk
(`root/<bucket>/<object name>`). The client code under test is the real one; only the server is
local. Read-only: uploads are not emulated.
"""
from __future__ import annotations

import datetime
import http.server
import json
import os
import socketserver
import ssl
import threading
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
_UPDATED = "2026-01-01T00:00:00.000Z"


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


class _StorageApi(http.server.BaseHTTPRequestHandler):
  """The GCS JSON API calls a reader makes, served from `server.root` (runs inside the tunnel)."""
  protocol_version = "HTTP/1.1"

  def log_message(self, *args):  # keep test output quiet
    pass

  def _reply(self, status: int, body: bytes, content_type="application/json", headers=()):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    for key, value in headers:
      self.send_header(key, value)
    self.end_headers()
    self.wfile.write(body)

  def _json(self, status: int, payload: dict):
    self._reply(status, json.dumps(payload).encode())

  def _not_found(self, what: str):
    self._json(404, {"error": {"code": 404, "message": f"No such object: {what}"}})

  def _object_path(self, bucket: str, name: str) -> str:
    return os.path.join(self.server.root, bucket, *name.split("/"))

  def do_GET(self):  # pylint: disable=invalid-name
    host = self.headers.get("Host", "").split(":")[0]
    url = urllib.parse.urlsplit(self.path)
    query = dict(urllib.parse.parse_qsl(url.query))
    self.server.requests.append((host, url.path))
    parts = url.path.split("/")
    if host == "storage.googleapis.com":  # /<bucket>/<object>: media, with a Range header
      bucket, name = parts[1], urllib.parse.unquote("/".join(parts[2:]))
      return self._media(bucket, name)
    if parts[1:4] == ["storage", "v1", "b"] and len(parts) >= 5:
      bucket = parts[4]
      if len(parts) == 5:
        return self._json(200, {"name": bucket, "location": "US"})
      if len(parts) == 6 and parts[5] == "o":
        return self._list(bucket, query.get("prefix", ""), query.get("delimiter"))
      if len(parts) >= 7 and parts[5] == "o":
        return self._metadata(bucket, urllib.parse.unquote("/".join(parts[6:])))
    self._json(400, {"error": {"code": 400, "message": f"fake GCS does not serve {self.path}"}})

  def _metadata(self, bucket: str, name: str):
    path = self._object_path(bucket, name)
    if not os.path.isfile(path):
      return self._not_found(f"gs://{bucket}/{name}")
    self._json(200, {"name": name, "size": str(os.path.getsize(path)), "generation": "1",
                     "updated": _UPDATED})

  def _list(self, bucket: str, prefix: str, delimiter: str | None):
    root = os.path.join(self.server.root, bucket)
    names = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                   for d, _, files in os.walk(root) for f in files)
    items, prefixes = [], set()
    for name in (n for n in names if n.startswith(prefix)):
      rest = name[len(prefix):]
      if delimiter and delimiter in rest:
        prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
      else:
        items.append({"name": name, "size": str(os.path.getsize(os.path.join(root, name))),
                      "updated": _UPDATED})
    payload = {"items": items} if items else {}
    if prefixes:
      payload["prefixes"] = sorted(prefixes)
    self._json(200, payload)

  def _media(self, bucket: str, name: str):
    path = self._object_path(bucket, name)
    if not os.path.isfile(path):
      return self._not_found(f"gs://{bucket}/{name}")
    with open(path, "rb") as f:
      data = f.read()
    byte_range = self.headers.get("Range")
    if not byte_range:
      return self._reply(200, data, "application/octet-stream")
    start, _, end = byte_range.removeprefix("bytes=").partition("-")
    start, end = int(start), min(int(end) if end else len(data) - 1, len(data) - 1)
    if start >= len(data):
      return self._reply(416, b"", headers=[("Content-Range", f"bytes */{len(data)}")])
    self.server.bytes_served += end + 1 - start
    self._reply(206, data[start:end + 1], "application/octet-stream",
                headers=[("Content-Range", f"bytes {start}-{end}/{len(data)}")])


class _Proxy(http.server.BaseHTTPRequestHandler):
  """Accepts CONNECT to the storage hosts and serves the storage API inside the TLS tunnel."""

  def log_message(self, *args):
    pass

  def do_CONNECT(self):  # pylint: disable=invalid-name
    host = self.path.split(":")[0]
    if host not in _HOSTS:
      self.send_error(403, f"fake GCS proxies only {_HOSTS}")
      return
    self.send_response(200, "Connection established")
    self.end_headers()
    self.wfile.flush()
    try:
      tunnel = self.server.tls.wrap_socket(self.connection, server_side=True)
    except (ssl.SSLError, OSError):
      self.close_connection = True
      return
    _StorageApi(tunnel, self.client_address, self.server)
    self.close_connection = True


class _Server(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True


class FakeGcs:
  """Serves `root/<bucket>/<object>` as gs://<bucket>/<object> while it is running.

  `env()` gives the variables that point TensorFlow's GCS client here; they must be set in the
  process (and inherited by its workers) before the first gs:// access.
  """

  def __init__(self, root: str, cert_dir: str):
    self.root = root
    self.ca, leaf, key = _certificates(cert_dir)
    self._server = _Server(("127.0.0.1", 0), _Proxy)
    self._server.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self._server.tls.load_cert_chain(leaf, key)
    self._server.root = root
    self._server.requests = []
    self._server.bytes_served = 0
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  @property
  def requests(self) -> list[tuple[str, str]]:
    """(host, path) of every request served so far."""
    return self._server.requests

  @property
  def bytes_served(self) -> int:
    return self._server.bytes_served

  def env(self) -> dict[str, str]:
    proxy = f"http://127.0.0.1:{self._server.server_address[1]}"
    return {"HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": "", "no_proxy": "",
            "CURL_CA_BUNDLE": self.ca, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-gcs-token",
            "GCS_RETRY_CONFIG_MAX_RETRIES": "1"}

  def __enter__(self) -> "FakeGcs":
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._server.server_close()
