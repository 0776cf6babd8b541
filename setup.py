"""Installs animerec; the repository's top-level folders are its subpackages."""

from setuptools import setup

setup(
    name="animerec",
    version="0.1.0",
    description="TFX pipeline for a TFRS two-tower anime recommender, with TF Serving and Kubeflow integration",
    python_requires=">=3.10,<3.11",
    packages=[
        "animerec",
        "animerec.data",
        "animerec.model",
        "animerec.bench",
        "animerec.pipeline",
        "animerec.pipeline.worker_startup",
        "animerec.components",
        "animerec.components.retrieval_evaluator",
        "animerec.serving",
        "animerec.kubeflow",
        "animerec.schema",
    ],
    package_dir={
        "animerec.pipeline": "pipeline",
        "animerec.components": "components",
        "animerec.serving": "serving",
        "animerec.kubeflow": "kubeflow",
        "animerec.schema": "schema",
    },
    package_data={"animerec.schema": ["*.pbtxt"], "animerec.serving": ["*.config", "*.yaml", "*.pbtxt"]},
    # What the package imports at run time (requirements.txt pins these and the dev tools;
    # `make venv` installs from it, then this package with --no-deps).
    # Every distribution the package imports is named here; the pins are constraints.txt's
    # (tests/test_packaging.py checks both).
    install_requires=[
        "tfx[kfp]==1.16.0",
        "tensorflow==2.16.2",
        "tensorflow-recommenders==0.7.7",
        "scann==1.3.1",
        "tensorflow-transform==1.16.0",
        "tensorflow-metadata==1.16.1",
        "tensorflow-serving-api==2.16.1",
        "tfx-bsl==1.16.1",
        "apache-beam==2.74.0",
        "ml-metadata==1.16.0",
        "kfp==2.5.0",
        "kfp-server-api==2.0.5",
        "protobuf==3.20.3",
        "grpcio==1.85.3",
        "absl-py==1.4.0",
        "numpy==1.26.4",
        "scipy==1.12.0",
        "scikit-learn==1.5.1",
        "pandas==1.5.3",
        "pyarrow==10.0.1",
        "PyYAML==6.0.4",
        "urllib3==1.26.20",
        "dill==0.3.1.1",
        "matplotlib==3.9.2",
        "psutil==7.2.2",
        "aiohttp==3.14.5",
    ],
    entry_points={"console_scripts": ["animerec=animerec.cli:main"]},
)
