"""Stand-in for ``igrpo-serve`` in the Slurm launch test: a small HTTP server that behaves like
the project's (every route behind the API key, read the way igrpo-serve reads it) and records
what it was started with, so the test can assert on the launcher's wiring.

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
from igrpo_megatron.rollout import resolve_api_key


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if os.environ.get("PROBE_SERVE_FAIL") == "1":
        print("probe_serve: failing on purpose", file=sys.stderr)
        sys.exit(3)
    r = load_config(args.config, args.overrides).rollout
    key = resolve_api_key(r)
    out = os.environ["PROBE_OUT"]
    record = {"pid": os.getpid(), "host": r.host, "port": r.port, "api_key": key,
              "cmdline": open("/proc/self/cmdline").read(),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "overrides": args.overrides}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.headers.get("Authorization") != f"Bearer {key}":
                code = 401
            else:
                code = 200 if self.path in ("/health", "/v1/models") else 404
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
