//! One alias per row of the TRAM paper's tables (Sherborne et al., ICLR 2024). Each names the
//! composition with Adam as its default base; write `<alias>+sgd` for another base.

use tram::compose::registry::AliasRegistration;

/// Declares the aliases once: the list [`PAPER_ROWS`] (in the order of the paper's tables) and
/// one `inventory` registration per row.
macro_rules! aliases {
    ($(($name:literal, $composition:literal, $summary:literal)),* $(,)?) => {
        /// Every built-in alias in the order of the paper's tables (base optimizers first, then
        /// the baselines, their ASAM combinations and the TRAM variants). Reports and benchmarks
        /// list aliases in this order.
        pub const PAPER_ROWS: &[AliasRegistration] = &[$(AliasRegistration { name: $name, composition: $composition, summary: $summary }),*];
        $(tram::inventory::submit! { AliasRegistration { name: $name, composition: $composition, summary: $summary } })*
    };
}

aliases! {
    ("sgd", "sgd", "SGD"),
    ("adam", "adam", "Adam"),
    ("adamw", "adamw", "AdamW"),
    ("sam", "ball+adam", "SAM (Foret et al., 2021)"),
    ("asam", "ball(adaptive=true)+adam", "ASAM (Kwon et al., 2021), η = 0 on every parameter"),
    ("fsam", "fisher+adam", "FSAM (Kim et al., 2022)"),
    ("trpo", "reg:prev+adam", "TRPO penalty KL(f(θ_{t-1}) ‖ f(θ)) (Schulman et al., 2015)"),
    ("r3f", "reg:noise(distance=kl-sym,sample=uniform,through_target=true)+adam", "R3F (Aghajanyan et al., 2021)"),
    ("mesa", "reg:ema+adam", "MESA (Du et al., 2022)"),
    ("asam+trpo", "reg:prev+ball(adaptive=true)+adam", "ASAM on the TRPO-regularised loss (paper Table 11/12)"),
    ("asam+r3f", "reg:noise(distance=kl-sym,sample=uniform,through_target=true)+ball(adaptive=true)+adam", "ASAM on the R3F-regularised loss (paper Table 11/12)"),
    ("asam+mesa", "reg:ema+ball(adaptive=true)+adam", "ASAM on the MESA-regularised loss (paper Table 11/12)"),
    ("tram-prev", "prev+ball+adam", "TRAM-θ_{t-1}"),
    ("tram-pretrained", "pretrained+ball+adam", "TRAM-θ₀"),
    ("tram-noise", "noise+ball+adam", "TRAM-x"),
    ("tram-fisher", "noise+fisher+adam", "TRAM-Fisher"),
    ("tram-noise-mmd", "noise(distance=mmd)+ball+adam", "TRAM-x with MMD (paper Table 14)"),
    ("tram-noise-l2", "noise(distance=l2)+ball+adam", "TRAM-x with L2 (paper Table 14)"),
}
