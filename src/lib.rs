//! apigen-mt (inference branch scaffold).
pub mod llm;
