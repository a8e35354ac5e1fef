"""The archive of a compiled model: the Model Library Format writer and reader, the glue
templates rendered from the compiled-model record, and TIR as JSON with the graph and analysis
derived from it (those never import TVM).
"""
