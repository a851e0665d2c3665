"""The end of `make demo`: serve what `happysad run` pushed and query it over the REST API.

It runs the same commands a user would type: `happysad serve` in the background, then
`happysad predict` on a few held-out test images, then stops the server with SIGTERM.
"""

import argparse
import glob
import os
import shlex
import signal
import subprocess
import sys

from pipeline import orchestrate

IMAGES_PER_LABEL = 3


def sample_images(workdir: str, per_label: int = IMAGES_PER_LABEL) -> list[str]:
    """A few test-split images that `happysad preprocess` wrote, from each label."""
    images = []
    for label in ("happy", "sad"):
        pattern = os.path.join(workdir, "preprocess", "images", "test", label, "*")
        images += sorted(glob.glob(pattern))[:per_label]
    if not images:
        raise SystemExit(f"demo: no test images under {workdir}/preprocess/images: run first")
    return images


def _happysad(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *arguments]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True, help="the work directory of `happysad run`")
    parser.add_argument("--port", type=int, default=8501, help="REST port of the demo server")
    parser.add_argument("--model-name", default="happysad")
    args = parser.parse_args(argv)

    base = os.path.join(args.workdir, orchestrate.SERVING_DIR, args.model_name)
    if not os.path.isdir(base):
        print(f"demo: no pushed model in {base}: run `happysad run` first", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{args.port}"
    serve = _happysad(
        "serve",
        f"--model_name={args.model_name}",
        f"--model_base_path={os.path.abspath(base)}",
        f"--rest_api_port={args.port}",
    )
    print("$ happysad " + shlex.join(serve[3:]), flush=True)
    server = subprocess.Popen(serve)
    try:
        from serving import client

        client.wait_until_ready(url, args.model_name, timeout=120)
        images = sample_images(args.workdir)
        predict = _happysad("predict", *images, f"--server={url}", f"--model={args.model_name}")
        print("$ happysad " + shlex.join(predict[3:]), flush=True)
        return subprocess.run(predict, check=False).returncode
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
