// Bare-metal benchmark harness for TensorFlow Lite Micro, part of microexport's bench/.
//
// Runs one model (bench_model.h, written by bench/tflm_cortexm.py: the flatbuffer, the input
// bytes, the operators to register) BENCH_INVOKES times, copying the input into the input tensor
// before every Invoke() (the interpreter may reuse the input's memory for later tensors), and
// prints on stdout (semihosting):
//
//   tflm-overhead <ticks>          two back-to-back timer reads
//   tflm-invoke <i> <ticks>        ticks of one Invoke(), i = 1..BENCH_INVOKES
//   tflm-arena <bytes>             MicroInterpreter::arena_used_bytes()
//   tflm-output <hex>              the output tensor's bytes (at most kShownBytes of them)
//   tflm-output-fnv1a <hex>        else their 32-bit FNV-1a hash
//
// The timer is the CMSDK APB timer 0 of the MPS2 boards (a 32-bit down-counter at the 25 MHz
// system clock); under `qemu-system-arm -icount shift=0` one instruction lasts 1 ns, so one
// tick is 40 instructions.
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "bench_model.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace {

constexpr std::size_t kArenaBytes = BENCH_ARENA_BYTES;
constexpr std::size_t kShownBytes = 4096;
alignas(16) std::uint8_t g_arena[kArenaBytes];

struct CmsdkTimer {
  volatile std::uint32_t ctrl;
  volatile std::uint32_t value;
  volatile std::uint32_t reload;
};

CmsdkTimer* const g_timer = reinterpret_cast<CmsdkTimer*>(0x40000000u);

void TimerStart() {
  g_timer->ctrl = 0;
  g_timer->reload = 0xFFFFFFFFu;
  g_timer->value = 0xFFFFFFFFu;
  g_timer->ctrl = 1;  // enable, system clock, no interrupt
}

std::uint32_t TimerRead() { return g_timer->value; }

void LogToStderr(const char* text) { std::fputs(text, stderr); }

}  // namespace

int main() {
  RegisterDebugLogCallback(LogToStderr);
  const tflite::Model* model = tflite::GetModel(bench_model);
  tflite::MicroMutableOpResolver<BENCH_OP_COUNT> resolver;
  BENCH_REGISTER_OPS(resolver);
  tflite::MicroInterpreter interpreter(model, resolver, g_arena, kArenaBytes);
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    std::fputs("tflm-error AllocateTensors failed\n", stderr);
    return 2;
  }
  TfLiteTensor* input = interpreter.input(0);
  if (interpreter.inputs_size() != 1 || input->bytes != sizeof(bench_input)) {
    std::fprintf(stderr, "tflm-error input: %u tensors, %u bytes, expected 1 of %u\n",
                 static_cast<unsigned>(interpreter.inputs_size()),
                 static_cast<unsigned>(input->bytes),
                 static_cast<unsigned>(sizeof(bench_input)));
    return 3;
  }
  TimerStart();
  std::uint32_t first = TimerRead();
  std::uint32_t second = TimerRead();
  std::printf("tflm-overhead %lu\n", static_cast<unsigned long>(first - second));
  for (int i = 1; i <= BENCH_INVOKES; ++i) {
    std::memcpy(input->data.raw, bench_input, sizeof(bench_input));
    std::uint32_t start = TimerRead();
    TfLiteStatus status = interpreter.Invoke();
    std::uint32_t stop = TimerRead();
    if (status != kTfLiteOk) {
      std::fprintf(stderr, "tflm-error Invoke %d failed\n", i);
      return 4;
    }
    std::printf("tflm-invoke %d %lu\n", i, static_cast<unsigned long>(start - stop));
  }
  std::printf("tflm-arena %lu\n", static_cast<unsigned long>(interpreter.arena_used_bytes()));
  const TfLiteTensor* output = interpreter.output(0);
  if (output->bytes <= kShownBytes) {
    std::printf("tflm-output ");
    for (std::size_t i = 0; i < output->bytes; ++i) {
      std::printf("%02x", static_cast<unsigned>(output->data.uint8[i]));
    }
  } else {
    std::uint32_t hash = 2166136261u;
    for (std::size_t i = 0; i < output->bytes; ++i) {
      hash = (hash ^ output->data.uint8[i]) * 16777619u;
    }
    std::printf("tflm-output-fnv1a %08lx", static_cast<unsigned long>(hash));
  }
  std::printf("\n");
  return 0;
}
