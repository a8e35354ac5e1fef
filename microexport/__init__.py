"""microexport: compile neural networks to TVM-free C for microcontrollers.

The pipeline: import → lower → plan → aot → codegen → glue → package → deploy.
"""

from microexport.api import CompileResult, TestReport, compile, run, test  # noqa: A004
from microexport.version import __version__

__all__ = ["CompileResult", "TestReport", "__version__", "compile", "run", "test"]
