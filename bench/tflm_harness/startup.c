/*
 * Startup code of the TFLite Micro benchmark harness (microexport bench/): the vector table and
 * a reset handler that copies .data, zeroes .bss, enables the FPU when the code uses it, opens
 * the semihosting handles, runs the C++ static constructors and calls main. The linker script is
 * microexport's bare-metal one (templates/baremetal/linker.ld.j2), rendered by
 * bench/tflm_cortexm.py.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _estack[];
extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);
extern int main(void);

void Reset_Handler(void);
void Fault_Handler(void);
void _init(void);
void _fini(void);

/* Called by __libc_init_array() and exit(); there is no crti/crtn (-nostartfiles). */
void _init(void) {}
void _fini(void) {}

typedef void (*bench_handler)(void);

typedef union {
  void* stack;
  bench_handler handler;
} bench_vector;

__attribute__((section(".isr_vector"), used)) const bench_vector bench_vectors[16] = {
    {.stack = _estack},         {.handler = Reset_Handler}, {.handler = Fault_Handler},
    {.handler = Fault_Handler}, {.handler = Fault_Handler}, {.handler = Fault_Handler},
    {.handler = Fault_Handler}, {.handler = Fault_Handler}, {.handler = 0},
    {.handler = 0},             {.handler = 0},             {.handler = Fault_Handler},
    {.handler = Fault_Handler}, {.handler = 0},             {.handler = Fault_Handler},
    {.handler = Fault_Handler},
};

#define SCB_CPACR (*(volatile uint32_t*)0xE000ED88u)
#define SCB_CFSR (*(volatile uint32_t*)0xE000ED28u)

void Reset_Handler(void) {
  const uintptr_t data_words = ((uintptr_t)_edata - (uintptr_t)_sdata) / sizeof(uint32_t);
  const uintptr_t bss_words = ((uintptr_t)_ebss - (uintptr_t)_sbss) / sizeof(uint32_t);
  for (uintptr_t i = 0; i < data_words; ++i) {
    _sdata[i] = _sidata[i];
  }
  for (uintptr_t i = 0; i < bss_words; ++i) {
    _sbss[i] = 0;
  }
#if defined(__ARM_FP)
  SCB_CPACR |= (0xFu << 20); /* CP10 and CP11: full access */
  __asm volatile("dsb\n\tisb" ::: "memory");
#endif
  initialise_monitor_handles();
  __libc_init_array();
  exit(main());
}

void Fault_Handler(void) {
  fprintf(stderr, "tflm-error fault (CFSR 0x%08lx)\n", (unsigned long)SCB_CFSR);
  _exit(70);
}
