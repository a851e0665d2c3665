"""Installs happysad: the TFDS builder, the Beam/Keras pipeline and the model server."""

import setuptools

INSTALL_REQUIRES = [
    "tensorflow>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<4.10",
    # What the `tfds` command needs to start, offline included.
    "mlcroissant>=1.0",
    "importlib_resources>=6",
    "apache-beam>=2.77,<3",
    # Beam's WriteToTFRecord needs a CRC32C implementation.
    "google-crc32c>=1.5,<2",
    "keras>=3.13,<4",
    # The Keras TensorBoard callback needs it; tensorflow no longer pulls it in.
    "tensorboard>=2.21,<2.22",
    "keras-tuner>=1.4.7,<2",
    # 4.x wheels ship the Haar cascades under cv2.data; 5.x wheels do not.
    "opencv-python-headless>=4.10,<5",
    # MTCNN face-detector weights (MIT; pulls joblib and lz4 only: TensorFlow is its extra).
    "mtcnn>=1.0,<2",
    "pillow>=11",
    "numpy>=2,<3",
    "pandas>=2.2",
    "matplotlib>=3.9",
    "tqdm>=4.66",
    # TF Serving's protos and gRPC services (warm-up files, configs, the gRPC API).
    "tensorflow-serving-api>=2.21,<2.22",
    "grpcio>=1.60",
    "aiohttp>=3.10,<4",
    "orjson>=3.10",
    # The command lines, generated from the configuration dataclasses (what TFDS's CLI uses).
    "simple-parsing>=0.1.6",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        # tfds.testing (DatasetBuilderTestCase) imports it.
        "dill>=0.3.8,<0.5",
        "ruff>=0.6",
        # tests/pipeline/data/test_dask_runner.py runs the data job on a local Dask cluster.
        "dask[distributed]>=2024.4.2",
        "psutil>=5.9",
    ],
    "bench": [
        "flask>=3",
        # benchmarks/bench_quality.py: logistic heads, log-loss and AUC.
        "scikit-learn>=1.5",
    ],
    "gcp": ["apache-beam[gcp]>=2.77,<3"],
    "aws": ["apache-beam[aws]>=2.77,<3"],
    # --runner=DaskRunner (pipeline/data/dask_runner.py); the versions Beam's own [dask] extra asks.
    "dask": ["dask[distributed]>=2024.4.2"],
}

setuptools.setup(
    name="happysad",
    version="0.1.0",
    description="Happy/sad face classifier pipeline: TFDS dataset, Beam preprocessing, "
    "Keras training, TF-Serving-compatible SavedModel and model server (gRPC and REST).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["happysad_tfds*", "pipeline*", "serving*"]),
    include_package_data=True,
    package_data={
        "happysad_tfds": [
            "README.md",
            "CITATIONS.bib",
            "TAGS.txt",
            "checksums.tsv",
            "dummy_data/**/*",
        ],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["happysad=pipeline.cli:main"]},
)
