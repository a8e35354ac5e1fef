"""Integer-only quantized inference: TFLite Micro's fixed-point arithmetic, bit for bit.

- `fixedpoint`: the arithmetic in Python integers, for everything computed at compile time
  (multipliers and shifts, lookup tables of int8 activation functions);
- `te_math`: the same operations as TE expressions, for what runs on the device;
- `kernels`: the integer operators as TE computations (int8/int16 activations, int8 weights,
  int32 accumulators), free of any importer: the importer only passes parameters;
- `im2col`: int8 convolution, depthwise and fully connected kernels as TIR calling the C
  micro-kernels of templates/codegen/int8_dot.h.j2 (SMLAD on cores with the DSP extension).
"""
