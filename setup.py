"""Installs animerec; the repository's top-level folders are its subpackages."""

from setuptools import setup

setup(
    name="animerec",
    version="0.1.0",
    description="TFX pipeline for a TFRS two-tower anime recommender, with TF Serving and Kubeflow integration",
    python_requires=">=3.9,<3.11",
    packages=[
        "animerec",
        "animerec.data",
        "animerec.model",
        "animerec.bench",
        "animerec.pipeline",
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
    install_requires=[
        "tfx[kfp]==1.16.0",
        "tensorflow-recommenders==0.7.7",
        "dill==0.3.1.1",
        "matplotlib==3.9.2",
        "psutil==7.2.2",
        "aiohttp==3.14.5",
        "scikit-learn==1.5.1",
    ],
    entry_points={"console_scripts": ["animerec=animerec.cli:main"]},
)
