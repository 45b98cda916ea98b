"""Built-in device presets as flat ``crossbar.<key>`` tables, in the normalized units of ``config.TileConfig``.

Each entry cites where its numbers come from (docs/crossbar.md, "Presets"). Steps are fractions of a device's
range, so ``dw_min = 1 / states``; c2c and write noise are in units of the step.
"""

from __future__ import annotations

# aihwkit's default periphery: 7-bit DAC on [-1, 1], 9-bit ADC on [-12, 12], output noise 0.06. The network
# settles physically and its equilibrium is what is read (Kendall et al. 2020), so read noise is drawn there.
_READ = {"dac_bits": 7, "adc_bits": 9, "out_bound": 12.0, "out_noise": 0.06, "w_read_noise": 0.005,
         "read_noise": "equilibrium"}

PRESETS: dict[str, dict] = {
    "ideal": {
        "source": "no device effects: continuous conductances, exact reads and writes",
        "weight_omega": 0.01,  # a range wide enough that trained weights never reach a bound
    },
    "reram-exp": {
        "source": "Gong et al., IEDM 2018 (ReRAM, exponential step), via aihwkit ReRamESPresetDevice: its steps "
                  "1 - A exp(gamma z) fitted by the crossbar's exp(-gamma z) (noise-free pulse responses within 5% "
                  "of the range, tests/conformance/test_aihwkit_presets.py)",
        # least-squares fit of log step against z over [-1, 1] to aihwkit's preset (A_up -1.18445, A_down -0.081404,
        # gamma 5, a = b = -0.5, dw_min 0.00135 on [-1, 1], up_down 0.259359); noise as aihwkit's, in our units
        "response": "exponential", "gamma_up": 0.324, "gamma_down": 1.246, "dw_min": 1 / 1227, "up_down": -0.538,
        "dw_min_std": 5.0, "dw_min_dtod": 0.2, "bound_dtod": 0.3, "up_down_dtod": 0.087, "write_noise_std": 62.0,
        "pulse_mode": "stochastic", **_READ,
    },
    "reram-sb": {
        "source": "Gong et al., IEDM 2018 (ReRAM, soft bounds, range [-0.75, 1.25]), via aihwkit ReRamSBPresetDevice",
        # soft bounds on [-0.75, 1.25] are soft bounds on the centred range with down/up step ratio 1.25 / 0.75 and
        # an up step of 0.8 dw_min at mid-range: 0.8 x 0.002 / 2 = 1 / 1250 of the range (importers.from_aihwkit);
        # write noise 56 x 0.002 (weight units) = 70 of our steps; up_down_dtod 0.01 to first order on the ratio
        "response": "soft_bounds", "dw_min": 1 / 1250, "up_down": 1 - 1.25 / 0.75, "dw_min_std": 3.75,
        "dw_min_dtod": 0.3, "bound_dtod": 0.3, "up_down_dtod": 0.02, "write_noise_std": 70.0,
        "pulse_mode": "stochastic", **_READ,
    },
    "reram-hfo2": {
        "source": "Gong, Rasch et al., Nat. Commun. 2022 (HfO2 ReRAM array): few states, 0.7 log-normal dtod, ~10% stuck",
        "response": "soft_bounds", "dw_min": 1 / 12, "dw_min_std": 0.3, "dw_min_dtod": 0.7,
        "dw_min_dtod_lognormal": True, "bound_dtod": 0.2, "stuck_prob": 0.1, "pulse_mode": "stochastic", **_READ,
    },
    "ecram-li": {
        "source": "Tang et al., IEDM 2018 (Li-ion ECRAM): linear step, gamma 0.12 up / 0.51 down, ~1000 states",
        "response": "soft_bounds", "slope_up": 0.12, "slope_down": 0.51, "dw_min": 1 / 1000, "dw_min_std": 0.3,
        "dw_min_dtod": 0.1, "bound_dtod": 0.1, "up_down": 0.1, "pulse_mode": "stochastic", **_READ,
    },
    "ecram-mo": {
        "source": "Kim et al., IEDM 2019 (metal-oxide ECRAM): linear step, gamma 0.42 / 0.73, ~7000 states",
        "response": "soft_bounds", "slope_up": 0.42, "slope_down": 0.73, "dw_min": 1 / 7000, "dw_min_std": 2.0,
        "dw_min_dtod": 0.1, "bound_dtod": 0.1, "pulse_mode": "stochastic", **_READ,
    },
    "pcm": {
        "source": "Nandakumar et al., Front. Neurosci. 2020 (GST PCM): one-directional pairs with refresh, "
                  "~200 states, drift nu 0.05-0.1, programming noise ~4% of g_max",
        "response": "exponential", "gamma_up": 2.0, "gamma_down": 2.0, "dw_min": 1 / 200, "dw_min_std": 0.6,
        "dw_min_dtod": 0.2, "bound_dtod": 0.2, "pair": "one_sided", "program_noise": 0.04, "drift_nu": 0.05,
        "drift_nu_dtod": 0.02, "pulse_mode": "stochastic", **_READ,
    },
    "capacitor": {
        "source": "Li et al., VLSI 2018 (capacitor cell): linear step, gamma 0.05, ~400 states, charge leak",
        "response": "soft_bounds", "slope_up": 0.05, "slope_down": 0.05, "dw_min": 1 / 400, "dw_min_std": 0.3,
        "dw_min_dtod": 0.1, "bound_dtod": 0.1, "lifetime": 1e6, "pulse_mode": "stochastic", **_READ,
    },
    "fefet": {
        "source": "NeuroSim HZO FeFET table (~32 states, nonlinearity 1.75 LTP / 1.46 LTD, c2c < 0.5% of range)",
        "response": "table", "table_g": (0.0, 0.25, 0.5, 0.75, 1.0), "table_up": (1.75, 1.4, 1.0, 0.62, 0.25),
        "table_down": (0.27, 0.63, 1.0, 1.37, 1.73), "dw_min": 1 / 32, "dw_min_std": 0.15, "dw_min_dtod": 0.05,
        "pulse_mode": "stochastic", **_READ,
    },
}
