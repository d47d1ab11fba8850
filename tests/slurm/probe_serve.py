"""Stand-in for ``igrpo-serve`` in the Slurm launch test: a small HTTP server that behaves like
vLLM's where the launcher can tell (``/health`` open, ``/v1/models`` behind the API key) and
records what it was started with, so the test can assert on the launcher's wiring.

Arguments are igrpo-serve's: ``--config FILE [overrides]``, parsed by the real config loader.
Writes ``$PROBE_OUT/serve_<port>.json`` on start and ``serve_<port>.stopped`` on SIGTERM.
``PROBE_SERVE_FAIL=1`` makes it exit at once with status 3 (a server that cannot start).
"""
import argparse
import http.server
import json
import os
import signal
import sys

from igrpo_megatron.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if os.environ.get("PROBE_SERVE_FAIL") == "1":
        print("probe_serve: failing on purpose", file=sys.stderr)
        sys.exit(3)
    r = load_config(args.config, args.overrides).rollout
    out = os.environ["PROBE_OUT"]
    record = {"pid": os.getpid(), "host": r.host, "port": r.port, "api_key": r.api_key,
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "overrides": args.overrides}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                code = 200
            elif self.path == "/v1/models":
                code = 200 if self.headers.get("Authorization") == f"Bearer {r.api_key}" else 401
            else:
                code = 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(json.dumps({"port": r.port}).encode())

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer((r.host, r.port), Handler)

    def stop(signum, frame):
        open(os.path.join(out, f"serve_{r.port}.stopped"), "w").close()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    with open(os.path.join(out, f"serve_{r.port}.json"), "w") as f:
        json.dump(record, f)
    server.serve_forever()


if __name__ == "__main__":
    main()
