"""A stand-in SandboxFusion server on 127.0.0.1 for contract tests of the `sandbox_fusion` backend.

It speaks SandboxFusion's ``POST /run_code`` protocol (request: code, language, stdin, run_timeout,
compile_timeout, memory_limit_MB...; response: status, message, compile_result, run_result) and really
runs the code, in our own `local` sandbox, so the mapping is checked on real executions. Tests can queue
canned responses (HTTP errors, ``SandboxError`` status, compile failures) that a real server produces
but that cannot be provoked here; every request body is recorded.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reopold_agents.config.sandbox import SandboxLimits
from tools.sandbox.local import LocalSandbox


class FusionStandIn:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.canned: list[tuple[int, Any]] = []  # (HTTP status, JSON body) served before executing
        self._sandbox = LocalSandbox(SandboxLimits(max_output_bytes=1 << 20))
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                standin.requests.append({"path": self.path, **body})
                if self.path != "/run_code":
                    return self._send(404, {"detail": "Not Found"})
                if standin.canned:
                    return self._send(*standin.canned.pop(0))
                return self._send(200, standin.execute(body))

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def execute(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run ``body['code']`` like SandboxFusion's python runner and answer in its schema."""
        if body.get("language") != "python":
            return {"status": "SandboxError", "message": f"unsupported language {body.get('language')}",
                    "compile_result": None, "run_result": None, "files": {}}
        res = self._sandbox.run(body["code"], stdin=body.get("stdin"), timeout_s=float(body["run_timeout"]))
        run_result = {
            "status": "TimeLimitExceeded" if res.timed_out else "Finished",
            "execution_time": res.duration_s,
            "return_code": None if res.timed_out else res.exit_code,
            "stdout": res.stdout,
            "stderr": res.stderr,
        }
        ok = res.exit_code == 0 and not res.timed_out
        return {"status": "Success" if ok else "Failed", "message": "", "compile_result": None,
                "run_result": run_result, "executor_pod_name": None, "files": {}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
