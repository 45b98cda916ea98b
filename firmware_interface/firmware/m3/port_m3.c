/* The Cortex-M3 port for QEMU's mps2-an385: CMSDK APB UART0, SysTick milliseconds, reset by AIRCR. */
#include <stdint.h>

#include "board.h"
#include "port.h"
#include "protocol.h"

#define REG(addr) (*(volatile uint32_t *)(addr))
#define UART0 0x40004000u
#define UART_DATA REG(UART0 + 0x00)
#define UART_STATE REG(UART0 + 0x04) /* bit 0 TX full, bit 1 RX full */
#define UART_CTRL REG(UART0 + 0x08)  /* bit 0 TX enable, bit 1 RX enable, bit 3 RX interrupt enable */
#define UART_INT REG(UART0 + 0x0C)   /* interrupt status; write 1 to clear (bit 1 RX) */
#define NVIC_ISER0 REG(0xE000E100u)
#define UART_BAUDDIV REG(UART0 + 0x10)
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SCB_AIRCR REG(0xE000ED0Cu)
#define CPU_HZ 25000000u

#ifndef EP_QEMU_BAUD
#define EP_QEMU_BAUD 115200u
#endif

extern uint8_t arena_start[], arena_end[];
extern volatile uint32_t boot_seed; /* written by the launcher (QEMU's generic loader), 0 otherwise */

/* Survives resets: RAM is not cleared by a system reset, and the startup code leaves .noinit alone. */
__attribute__((section(".noinit"))) static uint32_t boot_magic, boot_count;
static volatile uint32_t ticks;

void systick_handler(void) { ticks++; }

uint32_t port_millis(void) { return ticks; }

uint32_t port_boot_id(void)
{
    if (boot_magic != 0xB007C0DEu) {
        boot_magic = 0xB007C0DEu;
        boot_count = 0;
    }
    uint32_t x = boot_seed ^ (++boot_count * 0x9E3779B9u) ^ SYST_CVR;
    x ^= x >> 16; /* murmur3's finaliser */
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

void port_write(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        while (UART_STATE & 1u)
            ;
        UART_DATA = data[i];
    }
}

/* The RX interrupt only wakes the CPU from WFI; the main loop reads the byte. */
void uart0_rx_handler(void) { UART_INT = 2u; }

int port_read_byte(void) { return (UART_STATE & 2u) ? (int)(UART_DATA & 0xFFu) : -1; }

void port_reset(void)
{
    while (UART_STATE & 1u) /* let the last byte go */
        ;
    __asm volatile("dsb");
    SCB_AIRCR = 0x05FA0004u; /* VECTKEY | SYSRESETREQ */
    __asm volatile("dsb");
    for (;;)
        ;
}

int main(void)
{
    UART_BAUDDIV = CPU_HZ / EP_QEMU_BAUD;
    UART_CTRL = 3u | (1u << 3);
    NVIC_ISER0 = 1u; /* UART0 RX */
    SYST_RVR = CPU_HZ / 1000u - 1u;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* processor clock, interrupt, enable */
    board_config_t cfg = {arena_start, (uint32_t)(arena_end - arena_start), 0, EP_DEFAULT_MAX_BATCH};
    board_init(&cfg);
    for (;;) {
        int c = port_read_byte();
        if (c >= 0) {
            uint8_t b = (uint8_t)c;
            board_feed(&b, 1);
            continue;
        }
        /* Sleep until the next byte (or SysTick) rather than spin on the status register: under QEMU a spinning
           CPU holds the emulator's I/O lock on every poll and slows the UART's input several times over. With
           interrupts masked, a byte that arrives between the check and WFI still wakes it. */
        __asm volatile("cpsid i" ::: "memory");
        if (!(UART_STATE & 2u))
            __asm volatile("wfi");
        __asm volatile("cpsie i" ::: "memory");
    }
}
