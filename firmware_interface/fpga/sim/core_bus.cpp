// The Verilated core (firmware_interface/fpga/rtl/ep_relax_core.v) clocked from C: each bus access is a cycle.
#include "core_bus.h"

#include "Vep_relax_core.h"
#include "verilated.h"

static Vep_relax_core *core;

static void tick(void)
{
    core->clk = 0;
    core->eval();
    core->clk = 1;
    core->eval();
}

static Vep_relax_core *model(void)
{
    if (!core) {
        core = new Vep_relax_core;
        core->rst = 1;
        tick();
        tick();
        core->rst = 0;
        tick();
    }
    return core;
}

extern "C" void core_bus_write(uint32_t addr, uint32_t value)
{
    Vep_relax_core *c = model();
    c->addr = addr;
    c->wdata = value;
    c->we = 1;
    tick();
    c->we = 0;
}

extern "C" uint32_t core_bus_read(uint32_t addr)
{
    Vep_relax_core *c = model();
    c->addr = addr;
    c->re = 1;
    tick();
    c->re = 0;
    c->eval();
    return c->rdata;
}

extern "C" void core_bus_run(void)
{
    core_bus_write(0, 1);
    while (!core->done)
        tick();
}
