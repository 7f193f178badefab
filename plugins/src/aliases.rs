//! One alias per row of the TRAM paper's tables (Sherborne et al., ICLR 2024). Each names the
//! composition with Adam as its default base; write `<alias>+sgd` for another base.

use tram::registry::AliasRegistration;

macro_rules! alias {
    ($name:literal, $composition:literal, $summary:literal) => {
        tram::inventory::submit! { AliasRegistration { name: $name, composition: $composition, summary: $summary } }
    };
}

alias!("sgd", "sgd", "SGD");
alias!("adam", "adam", "Adam");
alias!("adamw", "adamw", "AdamW");
alias!("sam", "ball+adam", "SAM (Foret et al., 2021)");
alias!("asam", "ball(adaptive=true)+adam", "ASAM (Kwon et al., 2021), η = 0 on every parameter");
alias!("fsam", "fisher+adam", "FSAM (Kim et al., 2022)");
alias!("trpo", "reg:prev+adam", "TRPO penalty KL(f(θ_{t-1}) ‖ f(θ)) (Schulman et al., 2015)");
alias!("r3f", "reg:noise(distance=kl-sym,sample=uniform,through_target=true)+adam", "R3F (Aghajanyan et al., 2021)");
alias!("mesa", "reg:ema+adam", "MESA (Du et al., 2022)");
alias!("asam+trpo", "reg:prev+ball(adaptive=true)+adam", "ASAM on the TRPO-regularised loss (paper Table 11/12)");
alias!(
    "asam+r3f",
    "reg:noise(distance=kl-sym,sample=uniform,through_target=true)+ball(adaptive=true)+adam",
    "ASAM on the R3F-regularised loss (paper Table 11/12)"
);
alias!("asam+mesa", "reg:ema+ball(adaptive=true)+adam", "ASAM on the MESA-regularised loss (paper Table 11/12)");
alias!("tram-prev", "prev+ball+adam", "TRAM-θ_{t-1}");
alias!("tram-pretrained", "pretrained+ball+adam", "TRAM-θ₀");
alias!("tram-noise", "noise+ball+adam", "TRAM-x");
alias!("tram-fisher", "noise+fisher+adam", "TRAM-Fisher");
alias!("tram-noise-mmd", "noise(distance=mmd)+ball+adam", "TRAM-x with MMD (paper Table 14)");
alias!("tram-noise-l2", "noise(distance=l2)+ball+adam", "TRAM-x with L2 (paper Table 14)");
