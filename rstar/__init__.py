"""rstar: the pure core of rstar-evolve (search, sandbox, grading, data building, model adapters, training, eval).

This package never imports prefect, mlflow or boto3 (tests/unit/test_architecture.py enforces it); torch,
transformers, trl and vllm are imported lazily inside adapter modules only.
"""

__version__ = "0.1.0"
