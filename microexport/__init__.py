"""microexport: compile neural networks to TVM-free C for microcontrollers.

The pipeline: import → lower → plan → aot → codegen → glue → package → deploy.
"""

from microexport.api import CompileResult, TestReport, compile, run, test  # noqa: A004

__version__ = "0.1.0"

__all__ = ["CompileResult", "TestReport", "__version__", "compile", "run", "test"]
