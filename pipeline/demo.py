"""The end of `make demo`: serve what `happysad run` pushed and query it over the REST API.

It runs the same commands a user would type: `happysad serve` in the background, then
`happysad predict` on a few held-out test images, then stops the server with SIGTERM.
"""

import argparse
import os
import shlex
import signal
import subprocess
import sys

from pipeline import artifacts, contract, orchestrate, stage_records

IMAGES_PER_LABEL = 3


def sample_images(workdir: str, per_label: int = IMAGES_PER_LABEL) -> list[str]:
    """PNG files of a few test-split examples of the dataset `happysad run` built in workdir.

    The examples are what the model was evaluated on (uint8 RGB 256x256), so the demo works
    for the synthetic faces, which exist only inside the dataset, as for a folder of photos.
    """
    import numpy as np
    from PIL import Image

    from pipeline.train import input_pipeline

    record = stage_records.read_record(os.path.join(workdir, "build"))
    if record is None:
        raise SystemExit(f"demo: no dataset built in {workdir}/build: run `happysad run` first")
    built = record.outputs
    dataset = f"{built['name']}/{built['config']}:{built['version']}"
    examples = input_pipeline.load_examples(dataset, "test", built["data_dir"])
    folder = os.path.join(workdir, "demo")
    found = {label: [] for label in contract.LABELS}
    for example in examples.as_numpy_iterator():
        label = contract.LABELS[int(example["label"])]
        if len(found[label]) < per_label:
            path = os.path.join(folder, f"{label}_{len(found[label]) + 1}.png")
            picture = Image.fromarray(np.asarray(example["image"]))
            artifacts.write_with(path, lambda temporary, picture=picture: picture.save(temporary))
            found[label].append(path)
    images = [path for label in contract.LABELS for path in found[label]]
    if not images:
        raise SystemExit(f"demo: the test split of {dataset} is empty")
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
