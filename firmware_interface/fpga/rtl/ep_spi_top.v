// The core behind an SPI slave (mode 0, MSB first), for boards whose host is an MCU or a USB-SPI bridge, and
// the top level the synthesis reports use. A transfer of 64 bits while cs_n is low is one bus access:
// {write, 7'b0, addr[23:0], data[31:0]}; it runs when cs_n rises. MISO shifts out, during the next transfer,
// the 32-bit word the last read returned. SCLK must be at most clk / 8; done is the core's done flag.
`default_nettype none

module ep_spi_top #(
    parameter LANES = 4, parameter WW = 16, parameter SW = 16, parameter ACC_W = 48, parameter BETA_W = 20,
    parameter SH_W = 6, parameter MAX_LAYERS = 4, parameter WDEPTH = 4096, parameter UDEPTH = 512,
    parameter IDEPTH = 1024, parameter DDEPTH = 256, parameter SPRAM = 0
) (
    input  wire clk,
    input  wire sclk,
    input  wire mosi,
    input  wire cs_n,
    output wire miso,
    output wire done
);
    reg [3:0] rst_count = 4'd0;  // power-on reset
    wire rst = ~&rst_count;
    always @(posedge clk)
        if (rst)
            rst_count <= rst_count + 4'd1;

    reg [2:0] sclk_s = 3'b000, cs_s = 3'b111;
    reg [1:0] mosi_s = 2'b00;
    always @(posedge clk) begin
        sclk_s <= {sclk_s[1:0], sclk};
        cs_s <= {cs_s[1:0], cs_n};
        mosi_s <= {mosi_s[0], mosi};
    end
    wire selected = !cs_s[1];
    wire sclk_rise = sclk_s[2:1] == 2'b01, sclk_fall = sclk_s[2:1] == 2'b10;

    reg [63:0] in_bits;
    reg [6:0]  count;
    reg [31:0] out_bits = 32'd0, last_read = 32'd0;
    reg [23:0] addr;
    reg [31:0] wdata;
    reg        we, re;
    wire [31:0] rdata;
    wire        rvalid, busy;

    always @(posedge clk) begin
        we <= 1'b0;
        re <= 1'b0;
        if (cs_s[2:1] == 2'b10) begin  // selected: the last read goes out
            count <= 7'd0;
            out_bits <= last_read;
        end
        if (selected && sclk_rise) begin
            in_bits <= {in_bits[62:0], mosi_s[1]};
            count <= count + 7'd1;
        end
        if (selected && sclk_fall)
            out_bits <= {out_bits[30:0], 1'b0};
        if (cs_s[2:1] == 2'b01 && count == 7'd64) begin  // deselected after 64 bits: the access
            addr <= in_bits[55:32];
            wdata <= in_bits[31:0];
            we <= in_bits[63];
            re <= !in_bits[63];
        end
        if (rvalid)
            last_read <= rdata;
    end
    assign miso = out_bits[31];

    ep_relax_core #(.LANES(LANES), .WW(WW), .SW(SW), .ACC_W(ACC_W), .BETA_W(BETA_W), .SH_W(SH_W),
                    .MAX_LAYERS(MAX_LAYERS), .WDEPTH(WDEPTH), .UDEPTH(UDEPTH), .IDEPTH(IDEPTH), .DDEPTH(DDEPTH),
                    .SPRAM(SPRAM)) core (
        .clk(clk), .rst(rst), .addr(addr), .we(we), .wdata(wdata), .re(re), .rdata(rdata), .rvalid(rvalid),
        .busy(busy), .done(done));
endmodule

`default_nettype wire
