"""The end of `make demo`: serve what `happysad run` pushed and query it as a client would.

It runs the commands a user would type: `happysad serve` in the background, then
`happysad predict` on a few raw test-split files (the same bytes the data job read, so the
served answers come from the same transform as training), then stops the server with SIGTERM.
"""

import argparse
import csv
import glob
import os
import shlex
import signal
import subprocess
import sys

from pipeline import contract

IMAGES_PER_LABEL = 3
DEMO_DIR = "demo"


def _manifest(workdir: str) -> str:
    pattern = os.path.join(workdir, "build", "tensorflow_datasets", "*", "*", "*")
    found = sorted(glob.glob(os.path.join(pattern, contract.MANIFEST_FILE)))
    if not found:
        raise SystemExit(f"demo: no dataset under {workdir}/build: run `happysad run` first")
    return found[-1]


def sample_images(workdir: str, per_label: int = IMAGES_PER_LABEL) -> list[str]:
    """Paths of a few accepted test-split files of each label, as the user gave (or we drew) them.

    Synthetic faces exist only in memory while the data job runs: they are drawn again (the
    renderer is deterministic) into W/demo/.
    """
    from pipeline.data import synthetic_faces

    with open(_manifest(workdir), encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["status"] == "accepted"]
    images = []
    for label in contract.LABELS[::-1]:
        chosen = [row for row in rows if row["label"] == label and row["split"] == "test"]
        for row in chosen[:per_label]:
            if os.path.isfile(row["path"]):
                images.append(row["path"])
                continue
            index = int(os.path.splitext(os.path.basename(row["path"]))[0])
            source = synthetic_faces.render_source_image(index, _synthetic_seed(workdir))
            path = os.path.join(workdir, DEMO_DIR, source.path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(source.data)
            images.append(path)
    return images


def _synthetic_seed(workdir: str) -> int:
    from pipeline import stage_records

    record = stage_records.read_record(os.path.join(workdir, "build"))
    return int(record.parameters.get("seed", 0)) if record else 0


def _happysad(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *arguments]


def main(argv=None) -> int:
    """`python -m pipeline.demo --workdir W [--port 8501]`; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True, help="the work directory of `happysad run`")
    parser.add_argument("--port", type=int, default=8501, help="REST port of the demo server")
    parser.add_argument("--model-name", default=contract.MODEL_NAME)
    args = parser.parse_args(argv)
    from pipeline import cli

    cli.configure_logging()

    base = os.path.join(args.workdir, "serving", args.model_name)
    if not os.path.isdir(base):
        print(f"demo: no pushed model in {base}: run `happysad run` first", file=sys.stderr)
        return 2
    images = sample_images(args.workdir)
    url = f"http://127.0.0.1:{args.port}"
    serve = _happysad(
        "serve",
        "--port=-1",  # gRPC on any free port: the demo's client speaks REST
        f"--model_name={args.model_name}",
        f"--model_base_path={os.path.abspath(base)}",
        f"--rest_api_port={args.port}",
    )
    print("$ happysad " + shlex.join(serve[3:]), flush=True)
    server = subprocess.Popen(serve)
    try:
        from serving import client

        client.wait_until_ready(url, args.model_name, timeout=120)
        predict = _happysad("predict", *images, f"--server={url}", f"--model={args.model_name}")
        print("$ happysad " + shlex.join(predict[3:]), flush=True)
        return subprocess.run(predict, check=False).returncode
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
