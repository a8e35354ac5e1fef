"""microexport: compile neural networks to TVM-free C for microcontrollers.

The pipeline: import → lower → plan → aot → codegen → glue → package → deploy.
"""

__version__ = "0.1.0"
