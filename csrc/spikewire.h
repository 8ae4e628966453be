/*
 * spikewire.h -- the one public header of the spikewire C core.
 *
 * This file is read twice: by the C compiler (csrc/ *.c include it after
 * <stdint.h>) and by cffi's cdef (runtime/_build.py strips the preprocessor
 * lines).  Keep it free of #include, function-like macros and anything cdef
 * cannot parse.  Only `#define NAME <integer>` constants are allowed.
 *
 * The arithmetic is specified once, in docs/fixed-point.md; the numpy
 * reference (runtime/reference.py) implements the same integer operations.
 *
 * Conventions
 * - Every function returns an int status: SW_OK (0) or a negative SW_E_*.
 *   Nothing prints, nothing aborts, nothing allocates after sw_core_create.
 * - Arrays are row-major, little/big endian agnostic (plain C arrays).
 * - A context must not be used from two threads at once.
 */
#ifndef SPIKEWIRE_H
#define SPIKEWIRE_H

#define SW_ABI_VERSION 3

/* The SW_ABI_VERSION this library was compiled with; the binding
 * (runtime/core.py) refuses to load a library whose value differs.  Every
 * struct a caller fills carries its size (and sw_config the version), and
 * the library rejects a mismatch with SW_E_ABI: an old caller with a new
 * library fails clearly instead of reading fields at the wrong offsets. */
int sw_abi_version(void);

/* ---- status codes ---------------------------------------------------- */
#define SW_OK 0
#define SW_E_NULL -1          /* a required pointer is NULL            */
#define SW_E_SIZE -2          /* a size is negative, zero or too large */
#define SW_E_PARAM -3         /* a parameter is out of its range       */
#define SW_E_WEIGHT -4        /* a weight is outside -63..63           */
#define SW_E_CHANNEL -5       /* an input channel id is out of range   */
#define SW_E_EVENTS -6        /* malformed CSR event list              */
#define SW_E_NOMEM -7         /* allocation failed (create only)       */
#define SW_E_PRESET -8        /* network does not fit the preset       */
#define SW_E_STATE -9         /* corrupt / mismatched state blob       */
#define SW_E_BADCTX -10       /* context is not a live sw_core         */
#define SW_E_BUFFER -11       /* output buffer too small               */
#define SW_E_ABI -12          /* struct size / ABI version mismatch    */
#define SW_E_LIMIT -13        /* step counter at its limit             */

/* ---- limits ---------------------------------------------------------- */
#define SW_WEIGHT_MAX 63      /* weights are signed 6 bit: -63..63     */
#define SW_MAX_NEURONS 65536  /* per population, any preset            */
#define SW_MAX_INPUTS 65536
#define SW_MAX_SHIFT 14       /* per-matrix gain shift 0..14           */
#define SW_MAX_TREF 255       /* refractory period in steps            */
#define SW_MAX_NOISE 4096     /* membrane noise amplitude (units)      */
#define SW_Q15_ONE 32768
#define SW_Q14_ONE 16384

/* presets */
#define SW_PRESET_UNBOUNDED 0
#define SW_PRESET_BSS2 1
#define SW_BSS2_NEURONS 512   /* hidden + readout                      */
#define SW_BSS2_FANIN 256     /* synapse rows per neuron               */

/* populations */
#define SW_POP_HIDDEN 0
#define SW_POP_READOUT 1

/* matrices */
#define SW_W_IN 0             /* [n_in  x n_hid] input -> hidden        */
#define SW_W_REC 1            /* [n_hid x n_hid] hidden -> hidden       */
#define SW_W_OUT 2            /* [n_hid x n_out] hidden -> readout      */

/*
 * Per-neuron parameters of one population; every pointer is an array of
 * n values (n = population size).  All values are integers; the float to
 * fixed mapping lives in Python (runtime/config.py) and docs/fixed-point.md.
 *   decay_syn  A, Q15 in 0..32768      I <- trunc(I*A / 2^15) + input
 *   gain_mem   G, Q15 in 0..32768      V <- V + away(sat16(L + I - V)*G / 2^15)
 *   v_leak     L, -32768..32767
 *   v_th       threshold, -32768..32767 (ignored for the readout)
 *   v_reset    reset potential, -32768..32767
 *   g_syn      per-neuron synaptic gain, Q14 in 0..32767
 */
typedef struct sw_pop_params {
    const int32_t *decay_syn;
    const int32_t *gain_mem;
    const int32_t *v_leak;
    const int32_t *v_th;
    const int32_t *v_reset;
    const int32_t *g_syn;
} sw_pop_params;

typedef struct sw_config {
    int32_t abi_version;      /* SW_ABI_VERSION of the caller           */
    int32_t struct_size;      /* sizeof(sw_config) of the caller        */
    int32_t n_in;             /* input channels                        */
    int32_t n_hid;            /* recurrent spiking neurons             */
    int32_t n_out;            /* non-spiking leaky readout neurons     */
    int32_t preset;           /* SW_PRESET_*                           */
    int32_t shift_in;         /* weight gain: w * 2^shift (0..14)      */
    int32_t shift_rec;
    int32_t shift_out;
    int32_t t_ref;            /* hidden refractory period, steps       */
    int32_t noise_amp;        /* uniform membrane noise +-amp, 0 = off */
    uint64_t noise_seed;      /* seed of the noise stream              */
    int32_t cadc_base;        /* CADC code = clamp((V - base) >> shift, 0, 255) */
    int32_t cadc_shift;       /* 0..8                                  */
} sw_config;

typedef struct sw_core sw_core;

/* ---- lifetime --------------------------------------------------------- */
/* Validate cfg and params, allocate one block, zero weights and state.   */
int sw_core_create(const sw_config *cfg, const sw_pop_params *hid,
                   const sw_pop_params *out, sw_core **out_core);
/* Free; NULL is accepted.  The pointer is invalid afterwards.            */
int sw_core_destroy(sw_core *core);
/* State to rest: I = 0, V = v_leak, no refractory, no spikes, step 0, noise stream rewound. */
int sw_core_reset(sw_core *core);
/* Human-readable name of a status code (static string, never NULL).      */
const char *sw_strerror(int status);
/* Name of the last validation failure of this context (static string).   */
const char *sw_core_last_error(const sw_core *core);
/* Validation message of the last sw_core_create failure (thread-unsafe). */
const char *sw_create_error(void);

/* ---- weights ---------------------------------------------------------- */
/* Copy n int8 weights in (validated -63..63 before any is written) / out. */
int sw_core_set_weights(sw_core *core, int32_t which, const int8_t *w, int64_t n);
int sw_core_get_weights(const sw_core *core, int32_t which, int8_t *w, int64_t n);

/* ---- simulation ------------------------------------------------------- */
/*
 * sw_core_run: T steps.  Input events of step t are
 * channels[indptr[t] .. indptr[t+1]-1] (repeats allowed: each adds its row
 * once more).  indptr has T+1 entries, indptr[0] == 0, non-decreasing,
 * indptr[T] == n_events.  Everything is validated before state changes.
 * Outputs (row-major, T rows); any output pointer may be NULL to skip it:
 *   hid_spikes [T x n_hid] uint8 0/1
 *   hid_v      [T x n_hid] int16 membrane after the step (after reset)
 *   out_v      [T x n_out] int16 readout membrane
 *   out_cadc   [T x n_out] uint8 8-bit CADC code of out_v
 * n_spikes (may be NULL) receives the number of hidden spikes in the block.
 */
int sw_core_run(sw_core *core, int32_t T, const int64_t *indptr,
                const int32_t *channels, int64_t n_events,
                uint8_t *hid_spikes, int16_t *hid_v,
                int16_t *out_v, uint8_t *out_cadc, int64_t *n_spikes);

/* One step: sw_core_run with T = 1. */
int sw_core_step(sw_core *core, const int32_t *channels, int32_t n_events,
                 uint8_t *hid_spikes, int16_t *hid_v,
                 int16_t *out_v, uint8_t *out_cadc);

/*
 * sw_core_run_ex: sw_core_run with every per-step observable learning and
 * in-the-loop training need, in a caller-filled struct.  The caller sets
 * struct_size = sizeof(sw_run_out) (else SW_E_ABI) and max_steps = the
 * rows each non-NULL array holds (T > max_steps: SW_E_BUFFER, nothing
 * runs).  Any array may be NULL to skip it.  Row-major, T rows:
 *   hid_spikes [T x n_hid] uint8 0/1
 *   hid_v      [T x n_hid] int16 membrane after the step (after reset)
 *   hid_v_pre  [T x n_hid] int16 membrane before reset: the value compared
 *              with the threshold (R while refractory)
 *   hid_ref    [T x n_hid] uint8 refractory counter after the step
 *   hid_cadc   [T x n_hid] uint8 CADC code of hid_v
 *   out_v      [T x n_out] int16 readout membrane
 *   out_cadc   [T x n_out] uint8 CADC code of out_v
 * n_spikes receives the number of hidden spikes in the block.
 * The step counter is limited (noise counter steps * n_hid below 2^64, and
 * steps <= 2^63 - 1): a run that would pass it returns SW_E_LIMIT.
 */
typedef struct sw_run_out {
    int32_t struct_size;      /* sizeof(sw_run_out) of the caller      */
    int32_t max_steps;        /* rows of every non-NULL array          */
    uint8_t *hid_spikes;
    int16_t *hid_v;
    int16_t *hid_v_pre;
    uint8_t *hid_ref;
    uint8_t *hid_cadc;
    int16_t *out_v;
    uint8_t *out_cadc;
    int64_t n_spikes;         /* out                                   */
} sw_run_out;

int sw_core_run_ex(sw_core *core, int32_t T, const int64_t *indptr,
                   const int32_t *channels, int64_t n_events, sw_run_out *out);

/* Select the kernel: 0 = optimised (default), 1 = plain reference loop.   */
int sw_core_set_kernel(sw_core *core, int32_t kernel);

/* ---- state (checkpoints) ---------------------------------------------- */
/*
 * The state blob, version 2 (docs/model-format.md, "Core state blob"):
 * header "SWST", version, length; tagged sections (tag, flags with bit 0 =
 * required, length, payload): the core writes CORE and WGHT; CRC-32 of all
 * bytes before the 4-byte trailer.  Load checks everything before writing
 * anything (SW_E_STATE, sw_core_last_error says what): version 1 blobs,
 * any corruption, other sizes and unknown required sections are refused;
 * unknown optional sections are skipped (room for later state).
 */
int sw_core_state_size(const sw_core *core, int64_t *size);
int sw_core_save_state(const sw_core *core, uint8_t *buf, int64_t size);
int sw_core_load_state(sw_core *core, const uint8_t *buf, int64_t size);
/* CRC-32 of n bytes (IEEE 802.3, the same as zlib.crc32). */
int sw_crc32(const uint8_t *buf, int64_t n, uint32_t *crc);

/* Raw views for debugging and tests (copies). */
int sw_core_get_membrane(const sw_core *core, int32_t pop, int16_t *v, int32_t n);
int sw_core_get_current(const sw_core *core, int32_t pop, int16_t *i, int32_t n);
int sw_core_steps_done(const sw_core *core, int64_t *steps);

/* ---- front end ---- */
/*
 * Streaming audio front end (csrc/frontend.c, docs/frontend.md): int16 PCM
 * at the input rate -> CSR input events, one row per core time step.
 * All coefficients are computed by runtime/frontend.py and copied in at
 * create; C evaluates no transcendental function, so results are
 * bit-identical across machines and independent of block boundaries.
 * Status codes are the SW_E_* above.
 */
#define SW_FE_MAX_CHANNELS 128
#define SW_FE_MAX_STAGES 4         /* biquads per channel                 */
#define SW_FE_MAX_STEP 4096        /* internal samples per step           */
#define SW_FE_MAX_SPIKES 15        /* spikes per channel per step         */
#define SW_FE_MAX_UP 4096          /* resampler interpolation factor L    */
#define SW_FE_MAX_DOWN 65536       /* resampler decimation factor M       */
#define SW_FE_MAX_TAPS 16384       /* resampler taps per phase K          */
#define SW_FE_MAX_BLOCK 1073741824 /* input samples per process call      */
#define SW_FE_NORM_NONE 0          /* sw_fe_params.norm: log level only   */
#define SW_FE_NORM_PCEN 1          /* per-channel log-domain PCEN          */

typedef struct sw_fe_params {
    int32_t n_channels;       /* C, 1..SW_FE_MAX_CHANNELS                  */
    int32_t n_stages;         /* S, biquads per channel                    */
    int32_t step_samples;     /* internal samples per core time step       */
    int32_t max_spikes;       /* cap of spikes per channel per step        */
    int32_t rs_up;            /* L                                         */
    int32_t rs_down;          /* M                                         */
    int32_t rs_taps;          /* K taps per phase                          */
    int32_t rs_skip;          /* leading resampler outputs dropped (delay) */
    const int16_t *rs_coef;   /* [L x K] Q14, taps reversed per phase;
                                 sum|h| * 32768 must fit int32             */
    const float *sos;         /* [S x 5 x C]: b0 b1 b2 a1 a2 per stage     */
    float preemph;            /* x'[n] = x[n] - preemph * x[n-1], 0..<1     */
    float env_alpha;          /* e <- e + alpha * (P - e), 0<..1            */
    float power_scale;        /* P = power_scale * sum over step of y^2    */
    float log2_k;             /* 2 / ln 2 (float32)                         */
    float floor_power;        /* e <= floor_power gives no drive           */
    float log2_floor;         /* log2(floor_power) (float32)                */
    float drive_scale;        /* drive = (log2 e - log2_floor) * scale     */
    float tiny;               /* |state| below this is set to 0 each step  */
    /* per-channel normalisation (docs/frontend.md "PCEN"); norm 0 = none and
     * the fields below are ignored (zero-initialised params = version 1)    */
    int32_t norm;             /* SW_FE_NORM_NONE or SW_FE_NORM_PCEN         */
    int32_t pcen_k;           /* Q15 smoother coefficient, 1..32768         */
    int32_t pcen_alpha;       /* Q15 strength, 0..32768                     */
    int32_t pcen_off;         /* Q16 log2: level giving drive 0 (offset)    */
    int64_t pcen_eps;         /* Q56 band power added to the smoothed one,
                                 2^16..2^60                                 */
    float pcen_scale;         /* drive per Q16 log2 unit above the offset   */
} sw_fe_params;

typedef struct sw_fe sw_fe;

/* Validate params, allocate one block, copy the coefficients, reset.       */
int sw_fe_create(const sw_fe_params *params, sw_fe **out_fe);
/* Free; NULL is accepted.                                                  */
int sw_fe_destroy(sw_fe *fe);
/* Clear all state (resampler history, filters, envelopes, counters).       */
int sw_fe_reset(sw_fe *fe);
/* Exact number of steps sw_fe_process(fe, ., n, ...) will complete.        */
int sw_fe_block_steps(const sw_fe *fe, int64_t n, int64_t *steps);
/* Exact number of steps sw_fe_flush will emit.                             */
int sw_fe_flush_steps(const sw_fe *fe, int64_t *steps);
/*
 * sw_fe_process: consume n int16 samples; write the completed steps as CSR:
 * indptr[0..n_steps] (indptr[0] = 0), channels[0..n_events-1].  With
 * steps from sw_fe_block_steps: indptr must hold max_steps + 1 entries,
 * max_steps >= steps and max_events >= steps * n_channels * max_spikes,
 * else SW_E_BUFFER before any state changes.
 */
int sw_fe_process(sw_fe *fe, const int16_t *x, int64_t n,
                  int64_t *indptr, int64_t max_steps,
                  int32_t *channels, int64_t max_events,
                  int64_t *n_steps, int64_t *n_events);
/* End of stream: feed silence until every input sample has reached the
 * filter bank, pad the last step, emit, then reset.  Same buffer rules.    */
int sw_fe_flush(sw_fe *fe, int64_t *indptr, int64_t max_steps,
                int32_t *channels, int64_t max_events,
                int64_t *n_steps, int64_t *n_events);
/* Counters since reset (any pointer may be NULL).                          */
int sw_fe_counters(const sw_fe *fe, int64_t *n_in, int64_t *n_internal, int64_t *n_steps);

/* ---- learning (csrc/learn.c) ---- */
/*
 * On-line learning on the core's integer state: e-prop, SuperSpike and the
 * readout delta rule, exactly as docs/learning.md (the numpy reference is
 * runtime/learning.py: ReferenceLearner).  A learner is separate from the
 * core: it is driven with what the core computed per step (input events,
 * hidden spikes, pre-reset membranes, refractory flags, readout membranes)
 * and never changes the core's weights while it steps; sw_learn_commit
 * turns its accumulators (Q16 shadow weights or Q16 gradients) into int8
 * weights that the caller copies into the core.
 */
#define SW_LEARN_EPROP 0
#define SW_LEARN_SUPERSPIKE 1
#define SW_LEARN_READOUT 2
#define SW_LEARN_SHADOW 0          /* accumulators are Q16 shadow weights    */
#define SW_LEARN_STOCHASTIC 1      /* Q16 gradients, seeded stochastic rounding */
#define SW_LEARN_MASK_IN 1         /* bits of learn_mask                      */
#define SW_LEARN_MASK_REC 2
#define SW_LEARN_MASK_OUT 4
#define SW_TARGET_NONE 0
#define SW_TARGET_HI 1
#define SW_TARGET_LO -1
#define SW_TRACE_I 0               /* sw_learn_get_trace kinds: eI / zI        */
#define SW_TRACE_V 1               /* eV / zV                                  */
#define SW_TRACE_FI 2
#define SW_TRACE_FV 3
#define SW_LEARN_TRACES 0          /* eligibility: per-synapse traces every step */
#define SW_LEARN_EVENTS 1          /* eligibility: the events form (docs/learning.md) */
#define SW_SI_PREV 0               /* synaptic intelligence state (sw_learn_get_si): acc at the last commit */
#define SW_SI_OMEGA 1              /* path integral since the last consolidation, Q24 weight steps^2 */
#define SW_SI_IMPORTANCE 2         /* Omega, Q16 (65536 = 1.0), 0..2^31-1       */
#define SW_SI_ANCHOR 3             /* the parameter at the last consolidation, Q16 */

typedef struct sw_learn_config {
    int32_t n_in, n_hid, n_out;
    int32_t rule;             /* SW_LEARN_EPROP / _SUPERSPIKE / _READOUT  */
    int32_t learn_mask;       /* SW_LEARN_MASK_* (readout rule: OUT only) */
    int32_t rate_in, rate_rec, rate_out;  /* right shifts 0..30          */
    int32_t signal_shift;     /* 0..30                                    */
    int32_t trace_shift;      /* 0..14                                    */
    int32_t surrogate_log2;   /* 8..15                                    */
    int32_t target_hi, target_lo;          /* int16, lo < hi              */
    int32_t weights;          /* SW_LEARN_SHADOW / SW_LEARN_STOCHASTIC    */
    uint64_t sr_seed;
    const int32_t *pre_A;     /* [n_hid] Q15 0..32768 presynaptic filters */
    const int32_t *pre_G;     /* [n_hid] Q15 0..32768                     */
    int32_t post_A, post_G;   /* eligibility filter, Q15 0..32768         */
    int32_t out_A, out_G;     /* readout-rule spike filter, Q15           */
    const int32_t *g_hid;     /* [n_hid] Q14 0..32767                     */
    const int32_t *v_th;      /* [n_hid] int16                            */
    const int32_t *g_out;     /* [n_out] Q14 0..32767                     */
    const int8_t *feedback;   /* [n_hid x n_out] -63..63, NULL = symmetric (W_out) */
    int32_t eligibility;      /* SW_LEARN_TRACES (0) / SW_LEARN_EVENTS    */
    int32_t si;               /* 1 = synaptic intelligence (docs/learning.md "Consolidation") */
    int32_t si_c_log2;        /* consolidation strength c = 2^k, -16..16  */
    int32_t si_xi_log2;       /* damping xi = 2^k weight steps^2, -16..8  */
} sw_learn_config;

typedef struct sw_learn sw_learn;

int sw_learn_create(const sw_learn_config *cfg, sw_learn **out_learn);
int sw_learn_destroy(sw_learn *learn);
const char *sw_learn_last_error(const sw_learn *learn);
/* Weights of one matrix (SW_W_*), validated -63..63; setting re-initialises
 * that matrix's accumulator (shadow: w * 2^16, stochastic: 0).             */
int sw_learn_set_weights(sw_learn *learn, int32_t which, const int8_t *w, int64_t n);
int sw_learn_get_weights(const sw_learn *learn, int32_t which, int8_t *w, int64_t n);
/* Accumulators (Q16), e.g. for checkpoints; set validates the clamp range. */
int sw_learn_get_acc(const sw_learn *learn, int32_t which, int32_t *acc, int64_t n);
int sw_learn_set_acc(sw_learn *learn, int32_t which, const int32_t *acc, int64_t n);
/* A trace (SW_TRACE_*) of matrix SW_W_IN / SW_W_REC, or zI/zV of SW_W_OUT ([n_hid]). */
int sw_learn_get_trace(const sw_learn *learn, int32_t which, int32_t kind, int16_t *v, int64_t n);
/* All traces to 0 and no previous spikes (call with sw_core_reset).       */
int sw_learn_reset_traces(sw_learn *learn);
/* The spikes before the next run's first step (0/1; default: the last run's). */
int sw_learn_set_last_spikes(sw_learn *learn, const uint8_t *z, int32_t n_hid);
/* Step and commit counters (a resumed checkpoint; commits < 2^24).         */
int sw_learn_set_counters(sw_learn *learn, int64_t steps, int64_t commits);
/* Target mode per readout unit: SW_TARGET_NONE / _HI / _LO.               */
int sw_learn_set_target(sw_learn *learn, const int8_t *modes, int32_t n_out);
/*
 * T learning steps over what the core computed: input events in CSR
 * (as sw_core_run), hidden spikes z [T x n_hid] (0/1), pre-reset membranes
 * v_pre [T x n_hid], refractory-at-start flags refr [T x n_hid] (0/1) and
 * readout membranes y [T x n_out].  The spikes before step 0 are those of
 * the previous call's last step (none after create / reset_traces).
 * Everything is validated before any state changes.
 */
int sw_learn_run(sw_learn *learn, int32_t T, const int64_t *indptr,
                 const int32_t *channels, int64_t n_events,
                 const uint8_t *z, const int16_t *v_pre, const uint8_t *refr,
                 const int16_t *y);
/* Events form: credit every pending step now with the learning signals so
 * far (the end of a stretch); the traces form has nothing pending (no-op). */
int sw_learn_flush(sw_learn *learn);
/* Accumulators -> int8 weights of every learning matrix (docs/learning.md). */
int sw_learn_commit(sw_learn *learn);
/* Synaptic intelligence (cfg.si = 1; docs/learning.md "Consolidation").
 * Every commit first pulls each learning synapse toward its anchor by
 * min(c Omega, 1) (theta - anchor) and adds its step's path integral to
 * omega; sw_learn_consolidate ends a task: Omega += max(0, omega) /
 * (Delta^2 + xi), omega = 0, anchor = theta.  Setting weights restarts the
 * path (prev = acc, anchor = theta, omega = 0) and keeps Omega.  The state
 * (SW_SI_*) of a learning matrix can be read and set (checkpoints, a base
 * model's importance); SW_E_PARAM without si or for a matrix that does not
 * learn.  sw_learn_set_si changes c and xi.                                */
int sw_learn_consolidate(sw_learn *learn);
int sw_learn_set_si(sw_learn *learn, int32_t c_log2, int32_t xi_log2);
int sw_learn_get_si(const sw_learn *learn, int32_t which, int32_t kind, int32_t *v, int64_t n);
int sw_learn_set_si_state(sw_learn *learn, int32_t which, int32_t kind, const int32_t *v, int64_t n);
/* 0 = optimised (default), 1 = plain reference loop.                       */
int sw_learn_set_kernel(sw_learn *learn, int32_t kernel);
int sw_learn_counters(const sw_learn *learn, int64_t *steps, int64_t *commits);

#endif
