#!/usr/bin/env python3
"""A bearer-token server for Ferry's registry tests (distribution's `auth: token:`).

Python 3 standard library only; the JWT is signed RS256 by `openssl dgst -sha256 -sign`.

    token_server.py --key signer.key --cert signer.crt --issuer ISS --service SVC \
        --user USER --password PASS --port-file FILE [--tls-cert C --tls-key K] \
        [--anonymous-pull] [--expires-in SECONDS] [--log FILE]

It binds 127.0.0.1 on a free port and writes that port to --port-file (atomically, after
it listens). Then it answers, on any path:

* GET ?service=SVC&scope=repository:NAME:pull,push[&scope=...][&account=...] with
  `Authorization: Basic` (the Docker token protocol), and
* POST with a form body grant_type=password&username=&password=&service=&scope= (the
  OAuth2 password grant of distribution's token spec),

with `{"token": JWT, "access_token": JWT, "expires_in": N, "issued_at": RFC3339}`. Wrong
credentials get 401 (with a Basic challenge); none get 401 too, unless --anonymous-pull,
in which case the token grants only `pull`. Authenticated users get every action they
ask for on `repository:` scopes, and `*` on `registry:catalog:*`. A `service` other
than SVC gets 400.

The JWT follows distribution 2.8's registry/auth/token/token.go: header
{"typ":"JWT","alg":"RS256","x5c":[base64 DER of --cert]} (the registry verifies the
x5c chain against its `rootcertbundle`, which must hold --cert or its issuer), claims
iss, sub, aud (a string: 2.8 compares it to its `service`), exp, nbf, iat, jti, access
[{type, name, actions}].

Every request is logged to --log as one JSON line: method, path, query parameters,
the user ("" for anonymous), the status answered and the access granted.
"""

import argparse
import base64
import binascii
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def cert_der_b64(pem_path: str) -> str:
    with open(pem_path, "r", encoding="ascii") as f:
        pem = f.read()
    body = pem.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----", 1)[0]
    der = base64.b64decode("".join(body.split()))
    # Standard base64 (with padding), as RFC 7515 section 4.1.6 asks for x5c.
    return base64.b64encode(der).decode("ascii")


class Issuer:
    def __init__(self, args):
        self.args = args
        self.x5c = [cert_der_b64(args.cert)]
        self.lock = threading.Lock()

    def sign(self, signing_input: bytes) -> bytes:
        out = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.args.key],
            input=signing_input,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError("openssl dgst -sign failed: " + out.stderr.decode(errors="replace"))
        return out.stdout

    def token(self, subject: str, access: list) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.x5c}
        claims = {
            "iss": self.args.issuer,
            "sub": subject,
            "aud": self.args.service,
            "exp": now + self.args.expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        ).encode("ascii")
        return signing_input.decode("ascii") + "." + b64url(self.sign(signing_input))


def parse_scopes(values: list) -> list:
    """`repository:NAME:a,b` items (a value may hold several, space-separated); NAME may
    contain ':' only in the registry:catalog:* form, so split on the first and last."""
    scopes = []
    for v in values:
        for item in v.split():
            first = item.find(":")
            last = item.rfind(":")
            if first < 0 or last == first:
                continue
            scopes.append((item[:first], item[first + 1 : last], item[last + 1 :].split(",")))
    return scopes


def grant(scopes: list, user: str) -> list:
    access = []
    for typ, name, actions in scopes:
        if typ == "repository":
            allowed = actions if user else [a for a in actions if a == "pull"]
        elif typ == "registry" and name == "catalog" and user:
            allowed = actions
        else:
            allowed = []
        access.append({"type": typ, "name": name, "actions": allowed})
    return access


class Handler(BaseHTTPRequestHandler):
    server_version = "ferry-test-token-server/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):  # the JSON log below replaces the default
        pass

    def record(self, status: int, params: dict, user, access):
        if not self.server.opts.log:
            return
        line = json.dumps(
            {
                "method": self.command,
                "path": urllib.parse.urlsplit(self.path).path,
                "params": params,
                "user": user,
                "status": status,
                "access": access,
            }
        )
        with self.server.log_lock, open(self.server.opts.log, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def reply(self, status: int, body: dict, extra_headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def basic_user(self):
        """(user, ok): user "" when no Basic credentials were sent."""
        h = self.headers.get("Authorization", "")
        if not h.lower().startswith("basic "):
            return "", True
        try:
            user, _, pw = base64.b64decode(h[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, False
        return user, self.check(user, pw)

    def check(self, user: str, pw: str) -> bool:
        o = self.server.opts
        return user == o.user and pw == o.password

    def answer(self, params: dict, user, ok: bool):
        o = self.server.opts
        if not ok:
            self.record(401, params, user, None)
            self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                       [("WWW-Authenticate", 'Basic realm="ferry-test-token"')])
            return
        if not user and not o.anonymous_pull:
            self.record(401, params, user, None)
            self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "credentials required"}]},
                       [("WWW-Authenticate", 'Basic realm="ferry-test-token"')])
            return
        service = params.get("service", [""])[0]
        if service != o.service:
            self.record(400, params, user, None)
            self.reply(400, {"errors": [{"code": "DENIED", "message": f"unknown service {service!r}"}]})
            return
        access = grant(parse_scopes(params.get("scope", [])), user)
        tok = self.server.issuer.token(user, access)
        self.record(200, params, user, access)
        self.reply(
            200,
            {
                "token": tok,
                "access_token": tok,
                "expires_in": o.expires_in,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )

    def do_GET(self):
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        user, ok = self.basic_user()
        self.answer(params, user, ok)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0") or "0")
        params = urllib.parse.parse_qs(self.rfile.read(n).decode(errors="replace"))
        if params.get("grant_type", [""])[0] != "password":
            self.record(400, params, None, None)
            self.reply(400, {"error": "unsupported_grant_type"})
            return
        user = params.get("username", [""])[0]
        ok = self.check(user, params.get("password", [""])[0])
        shown = {k: v for k, v in params.items() if k != "password"}
        self.answer(shown, user, ok)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--key", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--anonymous-pull", action="store_true")
    p.add_argument("--expires-in", type=int, default=300)
    p.add_argument("--log")
    opts = p.parse_args()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.opts = opts
    srv.issuer = Issuer(opts)
    srv.log_lock = threading.Lock()
    if opts.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    tmp = opts.port_file + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, opts.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
