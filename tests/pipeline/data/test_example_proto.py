import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline.data import example_proto


def test_examples_parse_as_tensorflows_own():
    features = {
        "image/encoded": b"\x89PNG\r\n\x1a\n\x00\xff",
        "label": 1,
        "text": "visage é".encode(),
        "scores": [0.25, -1.5],
        "ids": [0, 127, 128, 2**40, 2**63 - 1, -1, -(2**63)],
        "names": [b"a", b""],
        "empty": [],
    }
    parsed = tf.train.Example.FromString(example_proto.example(features)).features.feature
    assert parsed["image/encoded"].bytes_list.value == [features["image/encoded"]]
    assert parsed["label"].int64_list.value == [1]
    assert parsed["text"].bytes_list.value == [features["text"]]
    assert parsed["scores"].float_list.value == pytest.approx([0.25, -1.5])
    assert list(parsed["ids"].int64_list.value) == features["ids"]
    assert list(parsed["names"].bytes_list.value) == [b"a", b""]
    assert parsed["empty"].WhichOneof("kind") == "int64_list"
    assert set(parsed) == set(features)


def test_the_bytes_are_tensorflows_bytes():
    features = {"label": 1, "split": b"train", "ids": [3, 300]}
    expected = tf.train.Example(
        features=tf.train.Features(
            feature={
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
                "split": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"train"])),
                "ids": tf.train.Feature(int64_list=tf.train.Int64List(value=[3, 300])),
            }
        )
    )
    assert example_proto.example(features) == expected.SerializeToString(deterministic=True)


def test_writing_examples_does_not_import_tensorflow(tmp_path):
    code = (
        "import sys; from pipeline.data import example_proto; example_proto.example({'a': 1}); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
