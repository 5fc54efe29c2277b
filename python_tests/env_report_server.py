"""A tiny stdio MCP server (standard library only) with one tool, `environment`, that
answers with the environment this process was started with. The gateway spawns it with
`--upstream-cmd` so a test can see exactly which variables reach an upstream child.

It speaks newline-delimited JSON-RPC 2.0 on stdin/stdout, as the MCP stdio transport does.
"""

import json
import os
import sys


def started_with() -> dict:
    """The environment as exec() passed it (Python may add LC_CTYPE to os.environ itself)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return dict(os.environ)
    env = {}
    for item in raw.split(b"\0"):
        if item:
            name, _, value = item.partition(b"=")
            env[name.decode(errors="replace")] = value.decode(errors="replace")
    return env


def answer(msg_id, result=None, error=None) -> None:
    reply = {"jsonrpc": "2.0", "id": msg_id}
    if error is not None:
        reply["error"] = error
    else:
        reply["result"] = result
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


TOOL = {
    "name": "environment",
    "description": "The environment variables this server was started with",
    "inputSchema": {"type": "object", "properties": {}},
}


def handle(msg: dict) -> None:
    method, msg_id = msg.get("method"), msg.get("id")
    if msg_id is None:
        return  # a notification
    if method == "initialize":
        answer(msg_id, {
            "protocolVersion": msg.get("params", {}).get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "env-report", "version": "1"},
        })
    elif method == "ping":
        answer(msg_id, {})
    elif method == "tools/list":
        answer(msg_id, {"tools": [TOOL]})
    elif method == "tools/call" and msg.get("params", {}).get("name") == "environment":
        text = json.dumps(started_with())
        answer(msg_id, {"content": [{"type": "text", "text": text}], "isError": False})
    else:
        answer(msg_id, error={"code": -32601, "message": f"no method {method}"})


def main() -> None:
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict):
            handle(msg)


if __name__ == "__main__":
    main()
