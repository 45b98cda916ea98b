// A weight bank: ep_ram, or on an iCE40 UP5K (SPRAM = 1) one single-port 16K x 16 SPRAM block. The core never
// writes and reads a bank in the same cycle (the host writes while the core is idle), so one port serves both.
`default_nettype none

module ep_wram #(
    parameter WIDTH = 16,
    parameter DEPTH = 4096,
    parameter SPRAM = 0,
    parameter AW = (DEPTH > 1) ? $clog2(DEPTH) : 1
) (
    input  wire             clk,
    input  wire             we,
    input  wire [AW-1:0]    waddr,
    input  wire [WIDTH-1:0] wdata,
    input  wire [AW-1:0]    raddr,
    output wire [WIDTH-1:0] rdata
);
    generate
        if (SPRAM) begin : spram
            wire [13:0] a = we ? waddr : raddr;
            wire [15:0] dout;
            SB_SPRAM256KA ram (
                .ADDRESS(a), .DATAIN({{(16 - WIDTH){1'b0}}, wdata}), .MASKWREN(4'b1111), .WREN(we),
                .CHIPSELECT(1'b1), .CLOCK(clk), .STANDBY(1'b0), .SLEEP(1'b0), .POWEROFF(1'b1), .DATAOUT(dout));
            assign rdata = dout[WIDTH-1:0];
        end else begin : bram
            ep_ram #(.WIDTH(WIDTH), .DEPTH(DEPTH)) ram (
                .clk(clk), .we(we), .waddr(waddr), .wdata(wdata), .raddr(raddr), .rdata(rdata));
        end
    endgenerate
endmodule

`default_nettype wire
