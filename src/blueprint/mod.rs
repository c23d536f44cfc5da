//! Phase 1: task blueprints — an instruction for the simulated user, the ground-truth actions
//! that fulfil it, and the outputs the agent must say.
//!
//! This module holds what every stage shares: the [`Rejection`] with its stable code (one type for
//! both phases, in [`crate::run`]), and the
//! deterministic stage-1 checks ([`check`]): format, execution with its database diff, the
//! domain's policy rules, and duplicates. It uses domains but never touches models.

pub mod brief;
pub mod check;
pub mod committee;
pub mod pipeline;
pub mod plan;
pub mod prompt;
pub mod sampler;

pub use crate::run::Rejection;
