#!/usr/bin/env python3
"""A settings store for oh-host, written in Python (standard library only) against the plugin
protocol (docs/plugin-protocol.md). It runs isolated, as the host's own runner would:

    [extensions.settings_store]
    isolation = "process"
    command = ["python3", "examples/python-settings-store/settings_store.py"]
    implementation = "PythonSettingsStore"
    config = { root = "/var/lib/oh-host/python-settings" }   # optional

Each user's settings are one JSON file, `{"version": N, "settings": {...}}`, replaced by
rename under an exclusive lock, so several hosts (each with its own runner) may share the
directory, and an acknowledged store is on disk before the answer leaves.
"""

import fcntl
import json
import os
import socket
import struct
import sys

PROTOCOL = 1
MAX_FRAME = 64 << 20

# plugin-api's error codes (docs/plugin-protocol.md lists them all).
INVALID_ARGUMENT = 2
CONFLICT = 5
UNIMPLEMENTED = 11
INVALID_CONFIG = 12
INTERNAL = 1


class PluginError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def read_frame(sock):
    header = recv_exact(sock, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes")
    body = recv_exact(sock, length)
    if body is None:
        return None
    return json.loads(body)


def recv_exact(sock, n):
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_frame(sock, message):
    body = json.dumps(message, separators=(",", ":")).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)


class Store:
    def __init__(self, root):
        self.root = root
        os.makedirs(root, mode=0o700, exist_ok=True)

    def path(self, ctx):
        user = ctx.get("user_id")
        # Hex: any user id is a safe file name, and two ids never share one.
        name = "single-user" if user is None else "u-" + user.encode().hex()
        return os.path.join(self.root, name + ".json")

    def read(self, path):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def write(self, path, record):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def locked(self, path):
        lock = open(path + ".lock", "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
        return lock

    # The settings_store methods (plugin-api's SettingsStore), as the protocol names them.

    def load(self, ctx, args):
        record = self.read(self.path(ctx))
        return None if record is None else record["settings"]

    def store(self, ctx, args):
        settings = document(args, "settings")
        path = self.path(ctx)
        with self.locked(path):
            record = self.read(path) or {"version": 0}
            self.write(path, {"version": record["version"] + 1, "settings": settings})
        return None

    def load_versioned(self, ctx, args):
        record = self.read(self.path(ctx))
        return None if record is None else {"version": record["version"], "settings": record["settings"]}

    def store_versioned(self, ctx, args):
        settings = document(args, "settings")
        expected = args.get("expected_version")
        if not isinstance(expected, int):
            raise PluginError(INVALID_ARGUMENT, "expected_version must be an integer")
        path = self.path(ctx)
        with self.locked(path):
            record = self.read(path)
            current = 0 if record is None else record["version"]
            if current != expected:
                raise PluginError(CONFLICT, f"the settings are at version {current}, not {expected}")
            self.write(path, {"version": current + 1, "settings": settings})
        return current + 1

    def health(self, ctx, args):
        if not os.access(self.root, os.W_OK):
            raise PluginError(INTERNAL, f"{self.root} is not writable")
        return {"detail": f"python {sys.version.split()[0]}, {self.root}"}


def document(args, name):
    value = args.get(name)
    if not isinstance(value, dict):
        raise PluginError(INVALID_ARGUMENT, f"argument `{name}` must be a JSON object")
    return value


METHODS = ("load", "store", "load_versioned", "store_versioned", "health")


def build(start):
    if start.get("protocol") != PROTOCOL:
        raise PluginError(INVALID_CONFIG, f"this store speaks protocol {PROTOCOL}")
    if start.get("point") != "settings_store" or start.get("implementation") != "PythonSettingsStore":
        raise PluginError(
            INVALID_CONFIG,
            f"offers settings_store PythonSettingsStore, not {start.get('point')} {start.get('implementation')}",
        )
    config = start.get("config") or {}
    unknown = set(config) - {"root"}
    if unknown:
        raise PluginError(INVALID_CONFIG, f"unknown config keys {sorted(unknown)}; it has: root")
    root = config.get("root") or os.path.join(start["state_dir"], "python-settings")
    if not os.path.isabs(root):
        raise PluginError(INVALID_CONFIG, f"root `{root}` must be an absolute path")
    return Store(root)


def main():
    path = os.environ.get("OH_PLUGIN_SOCKET")
    if not path:
        print("settings_store.py: OH_PLUGIN_SOCKET is not set; oh-host starts this program", file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    start = read_frame(sock)
    if start is None or start.get("type") != "start":
        return 2
    try:
        store = build(start)
    except PluginError as e:
        write_frame(sock, {"type": "failed", "error": {"code": e.code, "message": e.message}})
        return 1
    write_frame(sock, {"type": "ready", "protocol": PROTOCOL, "name": "python-settings-store", "version": "1.0.0"})
    while True:
        message = read_frame(sock)
        if message is None or message.get("type") == "shutdown":
            return 0
        if message.get("type") != "call":
            continue
        answer = {"type": "result", "id": message["id"]}
        method = message.get("method")
        try:
            if method not in METHODS:
                raise PluginError(UNIMPLEMENTED, f"PythonSettingsStore has no method `{method}`")
            answer["ok"] = getattr(store, method)(message.get("ctx") or {}, message.get("args") or {})
        except PluginError as e:
            answer["error"] = {"code": e.code, "message": e.message}
        except Exception as e:  # a bug here fails this call, not the store
            answer["error"] = {"code": INTERNAL, "message": f"{type(e).__name__}: {e}"}
        write_frame(sock, answer)


if __name__ == "__main__":
    sys.exit(main())
