//! The integration suite: one test binary, with helpers in `util/`.
mod util;

mod blueprint_checks;
mod blueprint_pipeline;
mod blueprint_sampler;
mod dataset_export;
mod domain_bad;
mod domain_conformance;
mod domain_hostile;
mod domain_mock;
mod domain_policy;
mod domain_shipped;
mod fuzz;
mod llm;
mod rollouts;
mod script_host;
