// The fixed-point EP relaxation of a dense network (quantize/fixed_point.py) for one sample: weight, bias,
// shift, input, drive and state memories, LANES multiply-accumulate lanes, and a controller that runs STEPS
// steps of a phase (synchronous or alternating schedule, MSE nudge), behind a word-addressed register bus.
// The memory map, the weight layout and the cycle model are in docs/fpga.md; firmware_interface/fpga/layout.py
// writes a network into it.
`default_nettype none

module ep_relax_core #(
    parameter LANES      = 4,     // output units computed in parallel
    parameter WW         = 16,    // weight width (signed)
    parameter SW         = 16,    // state and input width
    parameter ACC_W      = 48,    // accumulator width (signed, wraps)
    parameter BETA_W     = 20,    // beta_q width (signed)
    parameter SH_W       = 6,     // shift width (unsigned)
    parameter MAX_LAYERS = 4,
    parameter WDEPTH     = 4096,  // words per weight bank
    parameter UDEPTH     = 512,   // state units of all layers together
    parameter IDEPTH     = 1024,  // inputs
    parameter DDEPTH     = 256,   // units of layer 1 (its drive)
    parameter SPRAM      = 0      // weight banks in iCE40 UP5K SPRAM (WW <= 16, WDEPTH <= 16384)
) (
    input  wire        clk,
    input  wire        rst,
    // the register bus: word addresses {region[23:20], offset[19:0]}; reads answer on the next cycle
    input  wire [23:0] addr,
    input  wire        we,
    input  wire [31:0] wdata,
    input  wire        re,
    output reg  [31:0] rdata,
    output reg         rvalid,
    output wire        busy,
    output reg         done
);
    localparam LB   = (LANES > 1) ? $clog2(LANES) : 1;
    localparam WA   = (WDEPTH > 1) ? $clog2(WDEPTH) : 1;
    localparam UA   = (UDEPTH > 1) ? $clog2(UDEPTH) : 1;
    localparam IA   = (IDEPTH > 1) ? $clog2(IDEPTH) : 1;
    localparam DA   = (DDEPTH > 1) ? $clog2(DDEPTH) : 1;
    localparam LA   = (MAX_LAYERS > 1) ? $clog2(MAX_LAYERS) : 1;
    localparam PW   = WW + SW + 1;            // a lane's product
    localparam NW   = BETA_W + SW + 2;        // the nudge's product

    localparam R_CTRL = 4'd0, R_LAYER = 4'd1, R_WEIGHT = 4'd2, R_BIAS = 4'd3, R_FWDSH = 4'd4, R_FBSH = 4'd5,
               R_STATE = 4'd6, R_INPUT = 4'd7;
    localparam ID_WORD = 32'h45500001;        // "EP", core version 1

    // ---- configuration registers ------------------------------------------------------------------------
    reg [7:0]        n_layers;
    reg              alternating, signed_input;
    reg [4:0]        state_bits;
    reg [15:0]       input_size, steps, target;
    reg [BETA_W-1:0] beta_q;
    reg [SH_W-1:0]   nudge_shift;
    reg [15:0]       l_units  [0:MAX_LAYERS-1];
    reg [UA-1:0]     l_off    [0:MAX_LAYERS-1];
    reg [WA-1:0]     l_wbase  [0:MAX_LAYERS-1];
    reg [WA-1:0]     l_fbbase [0:MAX_LAYERS-1];
    reg [SH_W:0]     l_shift  [0:MAX_LAYERS-1];  // signed: a negative state shift is a left shift
    reg [31:0]       cycles;
    reg [SW-1:0]     max_delta;
    reg              cur;          // the state bank holding the current states
    reg              drive_valid;  // layer 1's drive matches the input and layer 1's parameters

    wire [3:0]  region = addr[23:20];
    wire [19:0] offset = addr[19:0];
    wire        host_we = we && !busy;

    // ---- memories ---------------------------------------------------------------------------------------
    reg  [WA-1:0]    w_raddr;
    wire [WW-1:0]    w_rdata [0:LANES-1];
    reg  [UA-1:0]    p_raddr;                  // bias and shift memories
    wire [31:0]      bias_rdata;
    wire [SH_W-1:0]  fwdsh_rdata, fbsh_rdata;
    reg  [UA:0]      s_raddr;
    wire [SW-1:0]    s_rdata;
    reg              s_we;
    reg  [UA:0]      s_waddr;
    reg  [SW-1:0]    s_wdata;
    reg  [IA-1:0]    i_raddr;
    wire [SW-1:0]    i_rdata;
    reg  [DA-1:0]    d_raddr, d_waddr;
    reg              d_we;
    reg  [ACC_W-1:0] d_wdata;
    wire [ACC_W-1:0] d_rdata;

    genvar gl;
    generate
        for (gl = 0; gl < LANES; gl = gl + 1) begin : bank
            ep_wram #(.WIDTH(WW), .DEPTH(WDEPTH), .SPRAM(SPRAM)) w (
                .clk(clk), .we(host_we && region == R_WEIGHT && offset[19:16] == gl),
                .waddr(offset[WA-1:0]), .wdata(wdata[WW-1:0]), .raddr(w_raddr), .rdata(w_rdata[gl]));
        end
    endgenerate
    ep_ram #(.WIDTH(32), .DEPTH(UDEPTH)) bias_mem (
        .clk(clk), .we(host_we && region == R_BIAS), .waddr(offset[UA-1:0]), .wdata(wdata),
        .raddr(p_raddr), .rdata(bias_rdata));
    ep_ram #(.WIDTH(SH_W), .DEPTH(UDEPTH)) fwdsh_mem (
        .clk(clk), .we(host_we && region == R_FWDSH), .waddr(offset[UA-1:0]), .wdata(wdata[SH_W-1:0]),
        .raddr(p_raddr), .rdata(fwdsh_rdata));
    ep_ram #(.WIDTH(SH_W), .DEPTH(UDEPTH)) fbsh_mem (
        .clk(clk), .we(host_we && region == R_FBSH), .waddr(offset[UA-1:0]), .wdata(wdata[SH_W-1:0]),
        .raddr(s_raddr[UA-1:0]), .rdata(fbsh_rdata));
    ep_ram #(.WIDTH(SW), .DEPTH(2 * UDEPTH)) state_mem (
        .clk(clk), .we(s_we), .waddr(s_waddr), .wdata(s_wdata), .raddr(s_raddr), .rdata(s_rdata));
    ep_ram #(.WIDTH(SW), .DEPTH(IDEPTH)) input_mem (
        .clk(clk), .we(host_we && region == R_INPUT), .waddr(offset[IA-1:0]), .wdata(wdata[SW-1:0]),
        .raddr(i_raddr), .rdata(i_rdata));
    ep_ram #(.WIDTH(ACC_W), .DEPTH(DDEPTH)) drive_mem (
        .clk(clk), .we(d_we), .waddr(d_waddr), .wdata(d_wdata), .raddr(d_raddr), .rdata(d_rdata));

    // ---- the controller ---------------------------------------------------------------------------------
    localparam S_IDLE = 3'd0, S_LAYER = 3'd1, S_FWD = 3'd2, S_FB = 3'd3, S_WB = 3'd4, S_NEXT = 3'd5;
    reg [2:0]    st;
    reg          drive_pass;   // computing layer 1's drive from the input, not a step
    reg          pass;         // alternating schedule: 0 even layers (0-based), 1 odd layers
    reg [LA-1:0] li;           // the layer being updated
    reg [15:0]   c0;           // its first unit in this group of lanes
    reg [15:0]   cnt;          // items issued in this loop
    reg [15:0]   step;
    reg [WA-1:0] wptr, fbptr;  // running weight addresses (groups are stored one after the other)
    reg [2:0]    drain;        // cycles left for the pipeline to empty
    assign busy = st != S_IDLE;

    wire [LA-1:0] below = li - 1'b1, above = li + 1'b1;
    wire          last_layer = ({{(8 - LA){1'b0}}, li} == n_layers - 8'd1);
    wire [15:0]   fan_in = drive_pass ? input_size : l_units[below];
    wire [15:0]   units = l_units[li];
    wire [15:0]   group_n = (units - c0 > LANES) ? LANES : units - c0;
    wire          nb = (alternating && pass) ? ~cur : cur;  // the bank the neighbours are read from
    wire [SW:0]   x_ext = {signed_input & i_rdata[SW-1], i_rdata};

    // MAC pipeline: issue (addresses) -> operands (memory outputs) -> products -> shifted terms -> accumulate
    reg              m_v1, m_v2, m_v3, m_fb1, m_fb2, m_fb3;
    reg              m_src_in1;                     // operand b from the input memory (drive pass)
    reg [SH_W-1:0]   m_sh2;
    reg signed [PW-1:0]    prod [0:LANES-1];
    reg signed [ACC_W-1:0] term [0:LANES-1];       // a product, shifted for the feedback sum
    reg signed [ACC_W-1:0] fsum [0:LANES-1];       // forward sum of each lane
    reg signed [ACC_W-1:0] fbsum [0:LANES-1];      // feedback sum of each lane, shifts applied
    wire signed [SW:0] b_op = m_src_in1 ? $signed(x_ext) : $signed({1'b0, s_rdata});

    // write-back pipeline: issue lane -> parameters and old state -> total -> round and clamp -> write
    reg              b_v1, b_v2, b_v3, b_v4;
    reg [LB-1:0]     b_lane1;
    reg [15:0]       b_c1, b_c2, b_c3, b_c4;
    reg signed [ACC_W-1:0] b_base2, b_fb2, b_total3;
    reg signed [NW-1:0]    b_nudge2;
    reg [SW-1:0]     b_old2, b_old3, b_old4, b_v4_state;
    reg [LB:0]       lane;
    wire signed [ACC_W-1:0] fsum_b = fsum[b_lane1] + {{(ACC_W - 32){bias_rdata[31]}}, bias_rdata};
    wire signed [ACC_W-1:0] base_b = (drive_pass || li != 0) ? (fsum_b <<< fwdsh_rdata) : $signed(d_rdata);
    wire signed [SW+1:0] onehot = (b_c1 == target) ? ({{(SW + 1){1'b0}}, 1'b1} << state_bits) : {(SW + 2){1'b0}};
    wire signed [SW+1:0] diff = onehot - $signed({2'b00, s_rdata});
    wire signed [NW-1:0] nudge_p = $signed(beta_q) * diff;
    wire signed [NW-1:0] nudge_b = last_layer ? nudge_p : $signed({NW{1'b0}});
    wire signed [ACC_W-1:0] nudge_ext = {{(ACC_W - NW){b_nudge2[NW-1]}}, b_nudge2};

    // round half to even by state_shift (a left shift if it is negative), then clamp to [0, 2^state_bits - 1]
    wire [SH_W:0]    shift_l = l_shift[li];
    wire             left = shift_l[SH_W];
    wire [SH_W:0]    m = -shift_l;
    wire [SH_W-1:0]  k = left ? {SH_W{1'b0}} : shift_l[SH_W-1:0];
    wire signed [ACC_W-1:0] q = b_total3 >>> k;
    wire [ACC_W-1:0] rem = b_total3 & ~({ACC_W{1'b1}} << k);
    wire [ACC_W-1:0] half = (k == 0) ? {ACC_W{1'b0}} : ({{(ACC_W - 1){1'b0}}, 1'b1} << (k - 1'b1));
    wire             up = (k != 0) && ((rem > half) || (rem == half && q[0]));
    wire signed [ACC_W-1:0] rounded = q + $signed({{(ACC_W - 1){1'b0}}, up});
    wire [SW:0]      smax = ({{SW{1'b0}}, 1'b1} << state_bits) - 1'b1;
    wire [SW:0]      smax_m = smax >> m;  // the largest total whose left shift is still in range
    wire [SW-1:0]    shifted = b_total3[SW-1:0] << m;
    wire [SW-1:0]    v = left ? (b_total3[ACC_W-1] ? {SW{1'b0}} :
                                 (b_total3 > $signed({{(ACC_W - SW - 1){1'b0}}, smax_m})) ? smax[SW-1:0] : shifted) :
                         rounded[ACC_W-1] ? {SW{1'b0}} :
                         (rounded > $signed({{(ACC_W - SW - 1){1'b0}}, smax})) ? smax[SW-1:0] : rounded[SW-1:0];
    wire [SW-1:0]    delta = (b_v4_state > b_old4) ? b_v4_state - b_old4 : b_old4 - b_v4_state;

    // read addresses: the controller's while busy, the host's otherwise
    always @(*) begin
        w_raddr = offset[WA-1:0];
        p_raddr = offset[UA-1:0];
        s_raddr = {cur, offset[UA-1:0]};
        i_raddr = cnt[IA-1:0];
        d_raddr = c0[DA-1:0] + lane[LB-1:0];
        if (st == S_FWD) begin
            w_raddr = wptr;
            s_raddr = {nb, l_off[below] + cnt[UA-1:0]};
        end else if (st == S_FB) begin
            w_raddr = fbptr;
            s_raddr = {nb, l_off[above] + cnt[UA-1:0]};
        end else if (st == S_WB) begin
            p_raddr = l_off[li] + c0[UA-1:0] + lane[LB-1:0];
            s_raddr = {cur, l_off[li] + c0[UA-1:0] + lane[LB-1:0]};
        end
    end

    integer n;
    always @(posedge clk) begin
        d_we <= 1'b0;
        s_we <= 1'b0;
        rvalid <= re;
        if (rst) begin
            st <= S_IDLE;
            done <= 1'b0;
            drive_valid <= 1'b0;
            cur <= 1'b0;
            n_layers <= 8'd1;
            alternating <= 1'b0;
            signed_input <= 1'b0;
            state_bits <= 5'd8;
            m_v1 <= 1'b0; m_v2 <= 1'b0; m_v3 <= 1'b0; b_v1 <= 1'b0; b_v2 <= 1'b0; b_v3 <= 1'b0; b_v4 <= 1'b0;
        end else begin
            // -- the host's writes (ignored while busy)
            if (host_we) begin
                if (region == R_CTRL) begin
                    case (offset[3:0])
                        4'd0: if (wdata[0]) begin
                                  st <= S_LAYER;
                                  drive_pass <= !drive_valid;
                                  done <= 1'b0;
                                  cycles <= 32'd0;
                                  step <= 16'd0;
                                  pass <= 1'b0;
                                  li <= {LA{1'b0}};
                                  max_delta <= {SW{1'b0}};
                              end
                        4'd2: begin
                                  n_layers <= wdata[7:0];
                                  alternating <= wdata[8];
                                  signed_input <= wdata[9];
                                  state_bits <= wdata[20:16];
                              end
                        4'd3: input_size <= wdata[15:0];
                        4'd4: steps <= wdata[15:0];
                        4'd5: beta_q <= wdata[BETA_W-1:0];
                        4'd6: target <= wdata[15:0];
                        4'd7: nudge_shift <= wdata[SH_W-1:0];
                        4'd10: cur <= wdata[0];
                        default: ;
                    endcase
                    if (offset[3:0] == 4'd2)
                        drive_valid <= 1'b0;
                end else if (region == R_LAYER) begin
                    case (offset[2:0])
                        3'd0: l_units[offset[LA+2:3]] <= wdata[15:0];
                        3'd1: l_off[offset[LA+2:3]] <= wdata[UA-1:0];
                        3'd2: l_wbase[offset[LA+2:3]] <= wdata[WA-1:0];
                        3'd3: l_fbbase[offset[LA+2:3]] <= wdata[WA-1:0];
                        3'd4: l_shift[offset[LA+2:3]] <= wdata[SH_W:0];
                        default: ;
                    endcase
                    drive_valid <= 1'b0;
                end else if (region == R_STATE) begin
                    s_we <= 1'b1;
                    s_waddr <= {cur, offset[UA-1:0]};
                    s_wdata <= wdata[SW-1:0];
                end else begin
                    drive_valid <= 1'b0;  // inputs, weights, biases or shifts changed
                end
            end

            if (busy)
                cycles <= cycles + 32'd1;

            // -- MAC pipeline
            m_v1 <= (st == S_FWD || st == S_FB) && cnt < (st == S_FWD ? fan_in : l_units[above]);
            m_fb1 <= st == S_FB;
            m_src_in1 <= drive_pass;
            m_v2 <= m_v1;
            m_fb2 <= m_fb1;
            m_sh2 <= fbsh_rdata;
            m_v3 <= m_v2;
            m_fb3 <= m_fb2;
            for (n = 0; n < LANES; n = n + 1) begin
                prod[n] <= $signed(w_rdata[n]) * b_op;
                term[n] <= {{(ACC_W - PW){prod[n][PW-1]}}, prod[n]} << (m_fb2 ? m_sh2 : {SH_W{1'b0}});
                if (m_v3) begin
                    if (m_fb3)
                        fbsum[n] <= fbsum[n] + term[n];
                    else
                        fsum[n] <= fsum[n] + term[n];
                end
            end

            // -- write-back pipeline
            b_v1 <= st == S_WB && lane < group_n;
            b_lane1 <= lane[LB-1:0];
            b_c1 <= c0 + lane;
            b_v2 <= b_v1;
            b_c2 <= b_c1;
            b_base2 <= base_b;
            b_fb2 <= fbsum[b_lane1];
            b_nudge2 <= drive_pass ? {NW{1'b0}} : nudge_b;
            b_old2 <= s_rdata;
            b_v3 <= b_v2 && !drive_pass;
            b_c3 <= b_c2;
            b_old3 <= b_old2;
            b_total3 <= b_base2 + b_fb2 + (nudge_ext <<< nudge_shift);
            if (b_v2 && drive_pass) begin
                d_we <= 1'b1;
                d_waddr <= b_c2[DA-1:0];
                d_wdata <= b_base2;
            end
            b_v4 <= b_v3;
            b_c4 <= b_c3;
            b_old4 <= b_old3;
            b_v4_state <= v;
            if (b_v4) begin
                s_we <= 1'b1;
                s_waddr <= {~cur, l_off[li] + b_c4[UA-1:0]};
                s_wdata <= b_v4_state;
                if (delta > max_delta)
                    max_delta <= delta;
            end

            case (st)
                S_LAYER: begin  // a layer starts: pointers to its weights, first group
                    c0 <= 16'd0;
                    wptr <= l_wbase[li];
                    fbptr <= l_fbbase[li];
                    cnt <= 16'd0;
                    drain <= 3'd0;
                    for (n = 0; n < LANES; n = n + 1) begin
                        fsum[n] <= {ACC_W{1'b0}};
                        fbsum[n] <= {ACC_W{1'b0}};
                    end
                    st <= (drive_pass || li != 0) ? S_FWD : (last_layer ? S_WB : S_FB);
                    lane <= {(LB + 1){1'b0}};
                end
                S_FWD: begin
                    if (cnt < fan_in) begin
                        cnt <= cnt + 16'd1;
                        wptr <= wptr + 1'b1;
                    end else if (drain != 3'd3) begin
                        drain <= drain + 3'd1;
                    end else begin
                        cnt <= 16'd0;
                        drain <= 3'd0;
                        st <= (drive_pass || last_layer) ? S_WB : S_FB;
                    end
                end
                S_FB: begin
                    if (cnt < l_units[above]) begin
                        cnt <= cnt + 16'd1;
                        fbptr <= fbptr + 1'b1;
                    end else if (drain != 3'd3) begin
                        drain <= drain + 3'd1;
                    end else begin
                        cnt <= 16'd0;
                        drain <= 3'd0;
                        st <= S_WB;
                    end
                end
                S_WB: begin
                    if (lane < group_n) begin
                        lane <= lane + 1'b1;
                    end else if (drain != 3'd4) begin
                        drain <= drain + 3'd1;
                    end else begin  // the group is written: the next group of this layer, or the next layer
                        drain <= 3'd0;
                        lane <= {(LB + 1){1'b0}};
                        for (n = 0; n < LANES; n = n + 1) begin
                            fsum[n] <= {ACC_W{1'b0}};
                            fbsum[n] <= {ACC_W{1'b0}};
                        end
                        if (c0 + LANES < units) begin
                            c0 <= c0 + LANES;
                            st <= (drive_pass || li != 0) ? S_FWD : (last_layer ? S_WB : S_FB);
                        end else begin
                            st <= S_NEXT;
                        end
                    end
                end
                S_NEXT: begin  // the next layer of the schedule, the next step, or the end of the phase
                    if (drive_pass) begin
                        drive_pass <= 1'b0;
                        drive_valid <= 1'b1;
                        li <= {LA{1'b0}};
                        st <= S_LAYER;
                    end else if (alternating && {{(8 - LA){1'b0}}, li} + 8'd2 < n_layers) begin
                        li <= li + 2'd2;
                        st <= S_LAYER;
                    end else if (!alternating && {{(8 - LA){1'b0}}, li} + 8'd1 < n_layers) begin
                        li <= li + 1'b1;
                        st <= S_LAYER;
                    end else if (alternating && !pass && n_layers > 8'd1) begin
                        pass <= 1'b1;
                        li <= {{(LA - 1){1'b0}}, 1'b1};
                        st <= S_LAYER;
                    end else begin
                        cur <= ~cur;
                        pass <= 1'b0;
                        li <= {LA{1'b0}};
                        if (step + 16'd1 < steps) begin
                            step <= step + 16'd1;
                            max_delta <= {SW{1'b0}};
                            st <= S_LAYER;
                        end else begin
                            st <= S_IDLE;
                            done <= 1'b1;
                        end
                    end
                end
                default: ;
            endcase
        end
    end

    // ---- the host's reads ---------------------------------------------------------------------------------
    reg [3:0]  rd_region;
    reg [3:0]  rd_bank;
    reg [31:0] rd_reg;
    always @(posedge clk) begin
        rd_region <= region;
        rd_bank <= offset[19:16];
        case (offset[3:0])
            4'd1: rd_reg <= {30'd0, done, busy};
            4'd2: rd_reg <= {11'd0, state_bits, 6'd0, signed_input, alternating, n_layers};
            4'd3: rd_reg <= {16'd0, input_size};
            4'd4: rd_reg <= {16'd0, steps};
            4'd8: rd_reg <= {{(32 - SW){1'b0}}, max_delta};
            4'd9: rd_reg <= cycles;
            4'd10: rd_reg <= {31'd0, cur};
            4'd11: rd_reg <= ID_WORD;
            4'd12: rd_reg <= {8'd0, ACC_W[7:0], WW[7:0], LANES[7:0]};
            4'd13: rd_reg <= {8'd0, BETA_W[7:0], SH_W[7:0], SW[7:0]};
            4'd14: rd_reg <= {8'd0, MAX_LAYERS[7:0], 16'd0};
            default: rd_reg <= 32'd0;
        endcase
    end
    always @(*) begin
        case (rd_region)
            R_CTRL:   rdata = rd_reg;
            R_WEIGHT: rdata = {{(32 - WW){w_rdata[rd_bank][WW-1]}}, w_rdata[rd_bank]};
            R_BIAS:   rdata = bias_rdata;
            R_STATE:  rdata = {{(32 - SW){1'b0}}, s_rdata};
            default:  rdata = 32'd0;
        endcase
    end
endmodule

`default_nettype wire
