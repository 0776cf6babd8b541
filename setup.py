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
    entry_points={"console_scripts": ["animerec=animerec.cli:main"]},
)
