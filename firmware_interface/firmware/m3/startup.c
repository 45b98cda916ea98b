/* Cortex-M3 vector table and reset handler: copy .data, clear .bss, run main. */
#include <stdint.h>

extern uint32_t data_start, data_end, data_load, bss_start, bss_end, stack_top;
int main(void);
void systick_handler(void);
void uart0_rx_handler(void);

void reset_handler(void);
static void fault_handler(void)
{
    for (;;)
        ;
}

__attribute__((section(".vectors"), used)) static void (*const vectors[17])(void) = {
    (void (*)(void))(uintptr_t)&stack_top, reset_handler, fault_handler, fault_handler, fault_handler,
    fault_handler, fault_handler, 0, 0, 0, 0, fault_handler, fault_handler, 0, fault_handler, systick_handler,
    uart0_rx_handler, /* IRQ 0: UART0 RX */
};

void reset_handler(void)
{
    uint32_t *src = &data_load, *dst = &data_start;
    while (dst < &data_end)
        *dst++ = *src++;
    for (dst = &bss_start; dst < &bss_end;)
        *dst++ = 0;
    main();
    for (;;)
        ;
}
