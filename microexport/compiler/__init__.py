"""Compiler stages: frontend (import) → lower → unpacked → plan → aot → codegen.

Each stage takes and returns typed records; `microexport.api.compile` runs them in order.
"""
