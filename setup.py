"""seqtrain: neural machine translation training in TensorFlow with guided alignment."""

from setuptools import find_packages, setup

# TensorFlow is chosen through an extra so that CPU users do not download the 570 MB CUDA wheel
# and GPU users get the CUDA libraries: `pip install seqtrain[cpu]` or `pip install seqtrain[gpu]`.
TENSORFLOW_CPU = "tensorflow-cpu>=2.16,<2.22"
TENSORFLOW_GPU = "tensorflow[and-cuda]>=2.16,<2.22"
# seqtrain export --format ctranslate2*, translate --engine ctranslate2 (spec API of 4.x).
CTRANSLATE2 = "ctranslate2>=4.0,<5"

setup(
    name="seqtrain",
    version="0.1.0",
    description="TensorFlow NMT trainer with guided alignment (OpenNMT-tf compatible configs)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["seqtrain", "seqtrain.*"]),
    package_data={"seqtrain": ["opennmt_keys.yml"]},  # the OpenNMT-tf key table
    install_requires=[
        "numpy>=1.23",
        "pyyaml>=5.4",
        "sentencepiece>=0.1.99",
        "sacrebleu>=2.0",
    ],
    extras_require={
        "cpu": [TENSORFLOW_CPU],
        "gpu": [TENSORFLOW_GPU],
        "align": ["eflomal>=2.0"],
        "plot": ["matplotlib>=3.5"],
        "ctranslate2": [CTRANSLATE2],
        "onmt": ["pyonmttok>=1.37"],  # OpenNMTTokenizer tokenization (OpenNMT-tf's tokenizer)
        "test": ["pytest>=7", "eflomal>=2.0", "matplotlib>=3.5", CTRANSLATE2, "pyonmttok>=1.37"],
    },
    entry_points={"console_scripts": ["seqtrain = seqtrain.cli:main"]},
)
